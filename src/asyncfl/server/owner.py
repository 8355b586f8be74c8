"""A data owner ("server" in the paper): hosts one shard and trains the model it is sent.

This plays the role of PySyft 0.2's ``WebsocketServerWorker`` (which no longer installs): the model owner
sends a :class:`TrainConfig` and the current weights, the owner runs ``fit(dataset_key=...)`` for
``max_nr_batches`` batches of SGD on its own data and sends the new weights back with the mean loss, the
number of samples used and its compute time. It then idles before replying so that the round lasts r
times the larger of its compute time and its pace (speed ratio r >= 1 emulates a slower data owner, a
pace the paper regime's round length; see core/regime.py).

``serve_shard`` is the body of one server process (``server/main.py`` starts one per server).
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import threading
from dataclasses import dataclass, field

import numpy as np
import torch

from asyncfl.core.data import to_tensor
from asyncfl.core.model import FlatWeights, architecture_signature, copy_into
from asyncfl.core.protocol import REQUEST_KEYS, TrainConfig
from asyncfl.core.split import shard_fingerprint
from asyncfl.core.task import ShardTrainer
from asyncfl.net import auth, shm, tcp, transport, wire, wsserver
from asyncfl.netem.lab import enter_netns
from asyncfl.process import cpu
from asyncfl.process.lifecycle import die_with, keep_freed_memory
from asyncfl.process.runlog import setup_logging
from asyncfl.server import pysyft

log = logging.getLogger("asyncfl.server")
BOOT_ID = cpu.boot_id()
# --faults original: websockets 8.1 (PySyft 0.2.3's server) gives an opening handshake no deadline (its
# open_timeout came with websockets 10), so a handshake slowed by loss is never dropped; the front door's
# bound on pending handshakes (net/wsserver.py's max_pending) still holds what idle peers can take.
ORIGINAL_OPEN_TIMEOUT_S = 3600.0


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


@dataclass
class ServerSpec:
    """Everything one server process needs (handed to it by server/main.py when it forks the process)."""

    index: int
    name: str
    host: str
    port: int  # 0 = any free port (the chosen one is reported through the ready queue)
    dataset_key: str
    images: np.ndarray  # uint8 [n, H, W]
    labels: np.ndarray  # int64 [n]
    seed: int
    speed_ratio: float
    split: dict  # how the shard was made (dataset, n_servers, stdev, seed), reported by hello
    netns: str | None = None  # network namespace to run in (see netem/lab.py), None = the current one
    network: dict = field(default_factory=dict)  # the link's conditions and how they are emulated, reported by hello
    token: str | None = None  # shared secret every connection must present (see net/auth.py); None = no check
    certfile: str = ""  # TLS certificate (PEM); with keyfile, the server speaks wss://
    keyfile: str = ""  # TLS private key (PEM)
    owner_pid: int = 0  # server/main.py: this server stops when that process ends (0 = never)
    pace_s: float = 0.0  # each round lasts at least this long (idle after compute; see core/regime.py)
    tcp_cc: str | None = None  # TCP congestion control of its sockets (None: the namespace's default)
    faults: str = "modern"  # original: all connections share one queue of received messages (server/pysyft.py)
    warm_torchscript: bool = False  # make the original wire's TorchScript archive before listening (paper regime)
    regime: str = "fast"  # reported by hello, so a client of the other regime refuses it


def serve_shard(spec: ServerSpec, ready_queue) -> None:
    """Body of one server process: host the shard on a websocket until SIGTERM."""
    if spec.netns:
        enter_netns(spec.netns)  # first, while this is the only thread: later threads and sockets follow
    torch.set_num_threads(1)  # one core per server; more threads only contend on a small machine
    keep_freed_memory(arenas=2)  # one request at a time: two arenas serve every connection thread
    setup_logging()
    # Ctrl-C reaches the whole process group: leave it to server/main.py, which stops us with SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # SIGTERM is blocked here, and so in every thread started from now on, and taken synchronously with
    # sigwait below: a handler would run only when the main thread's blocking accept() happened to return.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    if spec.owner_pid:
        die_with(spec.owner_pid)  # stop with server/main.py, however it ends (even kill -9)
    trainer = ShardTrainer(
        name=spec.name,
        dataset_key=spec.dataset_key,
        images=to_tensor(spec.images, spec.dataset_key),
        labels=torch.from_numpy(spec.labels),
        seed=spec.seed * 1000 + spec.index,
        speed_ratio=spec.speed_ratio,
        pace_s=spec.pace_s,
    )
    trainer.warm_up()
    if spec.warm_torchscript:
        # The original wire's model payload is cut from this model's TorchScript archive (about a second to
        # make, 70 MB of TorchScript): made before listening, not in the first round of a paced run.
        pysyft.warm_up(spec.dataset_key)
    fingerprint = shard_fingerprint(spec.split, spec.index)
    extra = {"split": spec.split, "index": spec.index, "network": spec.network, "shard_fingerprint": fingerprint,
             "regime": spec.regime}
    sysctls = tcp.sysctls()  # this namespace's: a fresh one has the kernel's defaults, not the host's

    store = pysyft.ObjectStore()  # the original wire's objects: one registry for every connection
    shared = pysyft.SharedQueue() if spec.faults == "original" else None

    def handler(conn: transport.Connection) -> None:
        peer = conn.remote_address
        log.info("connection from %s", peer)
        counts = {"served": 0, "refused": 0}
        session = Session()
        # What this connection's socket really uses, reported by hello (config.json records it).
        conn_extra = {**extra, "tcp": {"cc": tcp.congestion_or_none(conn.sock), "sysctl": sysctls}}
        # Each connection has its own thread, whose first training call would be several times slower:
        # paid here, while the client is still connecting, instead of in its first round.
        trainer.warm_up()

        def serve(message):
            # Text frames are the original's wire (net/pysyft.py), binary ones today's (net/wire.py).
            if isinstance(message, str):
                reply, reason = pysyft.handle_text(trainer, store, message)
            else:
                reply, reason = handle_frame(trainer, message, conn_extra, session)
            counts["served" if reason is None else "refused"] += 1
            if reason is not None and counts["refused"] <= 3:  # a flood of bad requests must not flood the log
                log.warning("refused a request from %s: %s", peer, reason)
            return reply

        if shared is not None:
            _, why = pysyft.shared_queue_session(conn, shared, serve)
        else:
            try:
                while True:
                    conn.send(serve(conn.recv()))
            except transport.ConnectionClosed as e:
                why = str(e)
        log.info("connection from %s ended (%s); %d requests served, %d refused", peer, why, counts["served"],
                 counts["refused"])

    fatal: list[str] = []

    def stop_for_restart(reason: str) -> None:  # server/main.py starts a server that exited again
        fatal.append(reason)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)

    try:
        # One thread per accepted connection reads a request, answers it, reads the next: a client has at
        # most one request out, so nothing is ever read ahead and a flood cannot pile up in memory.
        server = wsserver.Server(spec.host, spec.port, handler, auth.token_check(spec.token, spec.name),
                                  wire.MAX_FRAME_BYTES, auth.server_ssl_context(spec.certfile, spec.keyfile),
                                  name=spec.name, on_error=lambda e: log.info("dropped a connection: %s", e),
                                  on_fatal=stop_for_restart, tcp_cc=spec.tcp_cc,
                                  open_timeout_s=ORIGINAL_OPEN_TIMEOUT_S if spec.faults == "original" else 5.0)
    except (OSError, ValueError) as e:
        hint = " (another run holds it? --base-port 0 picks free ports)" if getattr(e, "errno", None) == errno.EADDRINUSE else ""
        log.error("cannot listen on %s:%d: %s%s", spec.host, spec.port, e, hint)
        ready_queue.put((spec.index, -1))
        raise SystemExit(1) from None
    accept = threading.Thread(target=server.serve_forever, name=f"{spec.name}-accept")
    accept.start()
    port = server.socket.getsockname()[1]  # with --base-port 0, the one the kernel chose
    log.info("%d samples (shard sha256 %s), listening on %s://%s:%d%s", len(spec.labels), fingerprint["sha256"],
             "wss" if spec.certfile else "ws", spec.host, port, " (token required)" if spec.token else "")
    ready_queue.put((spec.index, port))
    signal.sigwait({signal.SIGTERM})
    log.info("stopping (%s)", ", ".join(f"{k} {v}" for k, v in server.counts().items()))
    server.shutdown()
    accept.join()
    if fatal:
        log.error("%s; exiting so that server/main.py starts this server again", fatal[0])
        raise SystemExit(3)
