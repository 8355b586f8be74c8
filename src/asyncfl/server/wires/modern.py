"""Today's wire on the owner's side (``--wire modern``, net/wire.py): one binary request, one reply;
``hello`` says who the owner is, ``attach`` maps the client's shared memory segment (net/shm.py),
``fit``/``fit_shared`` train one round."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from asyncfl.core.model import FlatWeights, architecture_signature, copy_into
from asyncfl.core.protocol import REQUEST_KEYS, TrainConfig
from asyncfl.core.task import ShardTrainer
from asyncfl.net import shm, wire
from asyncfl.process import cpu
from asyncfl.server import wires

BOOT_ID = cpu.boot_id()


def hello_info(trainer: ShardTrainer, extra: dict) -> dict:
    """The ``hello_ok`` reply: who this data owner is, what it holds and how it trains."""
    n_classes = trainer.model.fc2.out_features
    counts = torch.bincount(trainer.labels, minlength=n_classes).tolist() if len(trainer.labels) else [0] * n_classes
    return {
        "type": "hello_ok",
        "protocol": wire.PROTOCOL_VERSION,
        "server": trainer.name,
        "dataset_key": trainer.dataset_key,
        "n_samples": int(len(trainer.labels)),
        "class_counts": counts,
        "speed_ratio": trainer.speed_ratio,
        "pace_s": trainer.pace_s,
        "boot_id": BOOT_ID,  # with pid: lets a client on the same machine read this process's CPU time
        "architecture": architecture_signature(trainer.dataset_key),
        "pid": os.getpid(),
        "fits": trainer.fits,
        **extra,
    }


@dataclass
class Session:
    """What one connection has set up: the client's shared memory segment, once attached (see net/shm.py)."""

    segment: shm.Segment | None = None
    received: dict[str, torch.Tensor] | None = None  # private copy of the request region: what is checked is what is trained


def handle_frame(trainer: ShardTrainer, frame: bytes | str, extra_info: dict,
                 session: Session | None = None) -> tuple[list, str | None]:
    """Answer one request frame with one reply frame (as wire.encode_parts buffers), and say why it was
    refused (None if served). ``session`` is the connection's state (a shared memory segment).
    Never raises: whatever arrives, the reply is ``hello_ok``, ``attach_ok``, ``fit_ok`` or ``error``."""
    session = session if session is not None else Session()
    try:
        # Weights as views of the receive buffer: checked, then copied into the model before the next read.
        header, weights = wire.decode(frame, copy=False)
        kind = header["type"]
        if kind not in REQUEST_KEYS:
            raise ValueError(f"unknown message type {kind[:40]!r}")
        if set(header) != REQUEST_KEYS[kind]:
            raise ValueError(f"a {kind} request has exactly the keys {sorted(REQUEST_KEYS[kind])}")
        if kind == "hello":
            if weights is not None:
                raise ValueError("hello carries no weights")
            return wire.encode_parts(hello_info(trainer, extra_info)), None
        if kind == "attach":
            if weights is not None:
                raise ValueError("attach carries no weights")
            session.segment = shm.Segment.attach(header["pid"], header["fd"], header["nonce"], trainer.reference)
            # Zeros, not empty: its pages are touched now rather than in the first round.
            session.received = FlatWeights.zeros(trainer.reference)
            return wire.encode_parts({"type": "attach_ok"}), None
        if not isinstance(header["dataset_key"], str):
            raise ValueError("dataset_key must be a string")
        config = TrainConfig.from_dict(header["train_config"])
        out = None
        if kind == "fit_shared":
            if weights is not None:
                raise ValueError("fit_shared carries its weights in shared memory, not in the frame")
            if session.segment is None:
                raise ValueError("fit_shared before attach")
            # Copied out first: the client could change the shared memory while it is being checked.
            weights, out = copy_into(session.received, session.segment.request), session.segment.reply
        trainer.check_weights(weights)
        result = trainer.fit(header["dataset_key"], config, weights, out)
        reply = {
            "type": "fit_ok",
            "loss": result.loss,
            "n_samples": result.n_samples,
            "compute_s": result.compute_s,
            "idle_s": result.idle_s,
        }
        return wire.encode_parts(reply, None if out is not None else result.weights), None
    except Exception as e:  # noqa: BLE001 - bad input of any kind (even a RecursionError from nested JSON)
        reason = f"{type(e).__name__}: {e}"[:300]
        return wire.encode_parts({"type": "error", "message": reason}), reason


class ModernWire(wires.ServerWire):
    name = "modern"

    def accepts(self, message) -> bool:
        return not isinstance(message, str)

    def session(self, info: dict) -> wires.Answer:
        trainer, state = self.trainer, Session()
        return lambda frame: handle_frame(trainer, frame, info, state)
