"""The original's wire (``--wire original``): a round as PySyft 0.2.3's websocket workers moved it.

Sans-I/O: this module builds and parses the text of each message; client/remote.py sends them, one
request/reply exchange at a time, and server/pysyft.py answers them. A round is seven exchanges
(``ROUND``; the table with its sources is in docs/departures.md, "The original's round on the wire"):

    1  ObjectMessage(ObjectWrapper(model))    -> None     train_config.send: the model as TorchScript
    2  ObjectMessage(ObjectWrapper(loss_fn))  -> None     ... the loss function as TorchScript
    3  ObjectMessage(TrainConfig)             -> None     ... and the configuration itself
    4  ExecuteWorkerFunctionMessage("fit")    -> None     server.fit: the server trains within this one
    5  ObjectRequestMessage(return id 0)      -> the loss tensor
    6  ObjectRequestMessage(model id)         -> ObjectWrapper(trained model)   train_config.get_model()
    7  ForceObjectDeleteMessage(loss_fn id)   -> None     the loss_fn pointer, garbage-collected

Each message is encoded as PySyft 0.2 encoded it: msgpack of the simplified object, LZ4-framed behind a
1-byte scheme code (syft/serde/compression.py ``_compress``), hex-encoded and sent as the text of
``str(bytes)``, ``b'<hex>'`` (websocket_client.py ``_forward_to_websocket_server_worker``); the reply
likewise (websocket_server.py ``_producer_handler``). The model travels as a TorchScript-sized payload:
today's weights in safetensors' layout (net/wire.py; never code) padded with the bytes of this model's own
TorchScript archive to the archive's exact length, so the bytes and their compressibility are the
original's while nothing received is ever executed. The training underneath is today's.

Everything received is checked before use: the text's form, the hex, the compression scheme, the
decompressed size (bounded before decompressing), msgpack's limits, and each message's shape.
"""

from __future__ import annotations

import binascii
import io
import json
import os
import secrets
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import lz4.frame
import msgpack

from asyncfl.net import wire

NO_COMPRESSION, LZ4 = 40, 41  # syft/serde/compression.py's scheme codes
MAX_BINARY_BYTES = wire.MAX_FRAME_BYTES // 2 - 2  # a text frame is twice the binary, plus "b''"
MAX_TEXT_CHARS = 2 * MAX_BINARY_BYTES + 3

# The simplified objects' type codes (PySyft's serde gives each class a code; their values do not change
# the size by more than a byte).
OBJECT_MESSAGE, OBJECT_REQUEST, FORCE_DELETE, WORKER_FUNCTION = 1, 2, 3, 4
WRAPPER, TRAIN_CONFIG, TENSOR, SCRIPT_MODULE, ERROR = 10, 11, 12, 13, 14
LOSS_ID = 0  # the original's return_ids=[0]


class SyftWireError(wire.WireError):
    """Text that is not a message of this wire."""


# --- encoding -------------------------------------------------------------------------------------


def to_text(obj) -> str:
    """msgpack, LZ4 frame behind the scheme byte, hex, and the ``b'...'`` of ``str(bytes)``."""
    binary = bytes((LZ4,)) + lz4.frame.compress(msgpack.packb(obj, use_bin_type=True))
    return "b'" + binascii.hexlify(binary).decode("ascii") + "'"


def from_text(text) -> object:
    """The object a message's text carries; SyftWireError for anything else."""
    if not isinstance(text, str):
        raise SyftWireError("expected a text frame")
    if len(text) > MAX_TEXT_CHARS or len(text) < 5 or not (text.startswith("b'") and text.endswith("'")):
        raise SyftWireError("not the text of a hex bytes object")
    try:
        binary = binascii.unhexlify(text[2:-1])
    except (binascii.Error, ValueError):
        raise SyftWireError("not hex") from None
    scheme, body = binary[0], binary[1:]
    if scheme == LZ4:
        try:
            decompressor = lz4.frame.LZ4FrameDecompressor()
            raw = decompressor.decompress(body, max_length=MAX_BINARY_BYTES)  # bounded before it is made
        except RuntimeError as e:
            raise SyftWireError(f"not an LZ4 frame: {e}") from None
        if not decompressor.eof:
            raise SyftWireError("compressed message larger than a frame, or cut short")
        if decompressor.unused_data:
            raise SyftWireError(f"{len(decompressor.unused_data)} bytes after the LZ4 frame")
    elif scheme == NO_COMPRESSION:
        raw = body
    else:
        raise SyftWireError(f"unknown compression scheme {scheme}")
    try:
        return msgpack.unpackb(raw, raw=False, strict_map_key=True, max_bin_len=MAX_BINARY_BYTES,
                               max_str_len=4096, max_array_len=16, max_map_len=8, max_ext_len=0)
    except Exception as e:  # noqa: BLE001 - msgpack raises several kinds of errors on bad input
        raise SyftWireError(f"not msgpack: {type(e).__name__}") from None


def new_id() -> int:
    """An object id as PySyft's ID_PROVIDER gave them: a random 63-bit integer."""
    return secrets.randbits(62) + 1


@lru_cache(maxsize=8)
def torchscript_archive(dataset: str) -> bytes:
    """This dataset's model traced and saved as the original's client did (``torch.jit.trace(Net(), ...)``),
    with PyTorch's default initialisation under seed 0: what the padding is cut from. Traced on a thread
    of its own: the archive's debug information records the Python stack of the trace, which would
    otherwise change its length with whoever called first."""
    import threading

    out: list[bytes] = []
    thread = threading.Thread(target=lambda: out.append(_trace(dataset)), name="torchscript")
    thread.start()
    thread.join()
    if not out:
        raise RuntimeError(f"could not trace the model of {dataset}")
    return out[0]


def _trace(dataset: str) -> bytes:
    import torch

    from asyncfl.core import datasets
    from asyncfl.core.model import Net

    spec = datasets.get(dataset)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in this PyTorch; the archive is what matters
        state = torch.random.get_rng_state()
        torch.manual_seed(0)
        traced = torch.jit.trace(Net.for_dataset(dataset), torch.zeros([1, 1, *spec.image_shape]))
        torch.random.set_rng_state(state)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
    return buffer.getvalue()


@lru_cache(maxsize=1)
def loss_fn_archive() -> bytes:
    """The original's loss function, ``@torch.jit.script``-ed ``F.nll_loss(input=pred, target=target)``,
    saved as a TorchScript archive: the second message's payload."""
    import torch

    from asyncfl.net import _syft_loss

    with warnings.catch_warnings(), _file_names_relative_to_install():
        warnings.simplefilter("ignore")
        buffer = io.BytesIO()
        torch.jit.save(torch.jit.script(_syft_loss.loss_fn), buffer)
    return buffer.getvalue()


@contextmanager
def _file_names_relative_to_install():
    """While compiling: torch.jit writes each compiled function's source file into the archive's debug
    information, and an absolute path would make the archive's length (and so the message table) depend
    on where this checkout and PyTorch are installed; record the path below its install folder instead."""
    import sysconfig

    from torch import _sources
    from torch.jit import frontend

    roots = {str(Path(__file__).resolve().parents[2])} | {sysconfig.get_paths()[k] for k in ("purelib", "platlib", "stdlib")}
    real = _sources.get_source_lines_and_file

    def relative(obj, error_msg=None):
        lines, lineno, filename = real(obj, error_msg)
        path = str(Path(filename).resolve())
        under = [r for r in roots if path.startswith(r + os.sep)]
        return lines, lineno, os.path.relpath(path, max(under, key=len)) if under else filename

    _sources.get_source_lines_and_file = frontend.get_source_lines_and_file = relative
    try:
        yield
    finally:
        _sources.get_source_lines_and_file = frontend.get_source_lines_and_file = real


def model_payload(weights, dataset: str) -> list:
    """The model as a TorchScript-sized payload: [SCRIPT_MODULE, bytes, n] whose first n bytes are the
    weights' frame (net/wire.py) and the rest this model's TorchScript archive's own bytes."""
    frame = wire.encode({"type": "model"}, weights)
    archive = torchscript_archive(dataset)
    if len(frame) > len(archive):
        raise ValueError("the weights' frame is longer than the model's TorchScript archive")
    return [SCRIPT_MODULE, frame + archive[: len(archive) - len(frame)], len(frame)]


def is_script_payload(payload) -> bool:
    """Is ``payload`` what a round's ObjectMessage carries: [SCRIPT_MODULE, bytes, n <= len(bytes)] (the
    model, or the loss function's archive)?"""
    return (isinstance(payload, list) and len(payload) == 3 and payload[0] == SCRIPT_MODULE
            and isinstance(payload[1], bytes) and _is_count(payload[2]) and payload[2] <= len(payload[1]))


def weights_of(payload) -> dict:
    """The weights a model payload carries (views of its bytes); SyftWireError if it is not one."""
    if not is_script_payload(payload):
        raise SyftWireError("not a model payload")
    header, weights = wire.decode(memoryview(payload[1])[: payload[2]], copy=True)
    if header.get("type") != "model" or weights is None:
        raise SyftWireError("the model payload carries no weights")
    return weights


# --- the messages of a round (client -> server) ---------------------------------------------------


def object_message(obj_id: int, payload) -> list:
    return [OBJECT_MESSAGE, [WRAPPER, [obj_id, payload]]]


def train_config_message(config_id: int, model_id: int, loss_fn_id: int, train_config) -> list:
    """TrainConfig.simplify's tuple: model and loss ids, batch size, epochs, optimizer, its args, the
    config's id, max_nr_batches, shuffle."""
    c = train_config
    return [OBJECT_MESSAGE, [TRAIN_CONFIG, [model_id, loss_fn_id, c.batch_size, 1, c.optimizer, {"lr": c.lr},
                                            config_id, c.max_nr_batches, c.shuffle]]]


def fit_message(dataset_key: str) -> list:
    return [WORKER_FUNCTION, ["fit", [[], {"dataset_key": dataset_key}, [LOSS_ID]]]]


def object_request(obj_id: int) -> list:
    return [OBJECT_REQUEST, [obj_id, None, ""]]


def force_delete(obj_id: int) -> list:
    return [FORCE_DELETE, obj_id]


@dataclass(frozen=True)
class Step:
    """One exchange of a round: what it is in PySyft's terms and what its reply must be."""

    name: str
    reply: str  # "none", "tensor" or "wrapper"


ROUND = (Step("ObjectMessage(model)", "none"), Step("ObjectMessage(loss_fn)", "none"),
         Step("ObjectMessage(TrainConfig)", "none"), Step("fit", "none"), Step("ObjectRequestMessage(loss)", "tensor"),
         Step("ObjectRequestMessage(model)", "wrapper"), Step("ForceObjectDeleteMessage(loss_fn)", "none"))


def round_messages(weights, dataset: str, dataset_key: str, train_config) -> tuple[list, int]:
    """The seven requests of one round (as objects, in ``ROUND``'s order) and the model's id."""
    model_id, loss_fn_id, config_id = new_id(), new_id(), new_id()
    loss_payload = [SCRIPT_MODULE, loss_fn_archive(), len(loss_fn_archive())]
    return [object_message(model_id, model_payload(weights, dataset)), object_message(loss_fn_id, loss_payload),
            train_config_message(config_id, model_id, loss_fn_id, train_config), fit_message(dataset_key),
            object_request(LOSS_ID), object_request(model_id), force_delete(loss_fn_id)], model_id


# --- replies (server -> client) -------------------------------------------------------------------


def loss_tensor(loss: float, stats: dict) -> list:
    """The loss as PySyft's tensor simplify sent it (id, torch.save bytes, chain, grad, tags, description,
    serializer); the description carries the round's statistics (n_samples, compute_s, idle_s)."""
    import torch

    buffer = io.BytesIO()
    torch.save(torch.tensor(loss), buffer, _use_new_zipfile_serialization=False)  # torch 1.4's format
    return [TENSOR, [LOSS_ID, buffer.getvalue(), None, None, None, json.dumps(stats, separators=(",", ":")), "torch"]]


def read_loss(reply) -> tuple[float, dict]:
    """The loss and statistics of a loss-tensor reply (the tensor's bytes are not unpickled: the loss is
    repeated in the statistics)."""
    if not (isinstance(reply, list) and len(reply) == 2 and reply[0] == TENSOR and isinstance(reply[1], list)
            and len(reply[1]) == 7 and isinstance(reply[1][5], str)):
        raise SyftWireError("not a loss tensor")
    try:
        stats = json.loads(reply[1][5])
    except (json.JSONDecodeError, RecursionError):
        raise SyftWireError("the loss tensor's description is not JSON") from None
    if not isinstance(stats, dict) or not isinstance(stats.get("loss"), (int, float)):
        raise SyftWireError("the loss tensor carries no statistics")
    try:
        return float(stats["loss"]), stats
    except OverflowError:  # an integer beyond a float: an owner's bad reply, not the client's crash
        raise SyftWireError("the loss is beyond a float's range") from None


def error(message: str) -> list:
    return [ERROR, message[:300]]


def check_reply(reply, kind: str):
    """``reply`` if it is of ``kind`` ("none", "tensor", "wrapper"); RemoteRefusal for an error reply."""
    if isinstance(reply, list) and len(reply) == 2 and reply[0] == ERROR:
        raise RemoteRefusal(str(reply[1]))
    ok = {"none": reply is None,
          "tensor": isinstance(reply, list) and len(reply) == 2 and reply[0] == TENSOR,
          "wrapper": isinstance(reply, list) and len(reply) == 2 and reply[0] == WRAPPER
          and isinstance(reply[1], list) and len(reply[1]) == 2}[kind]
    if not ok:
        raise SyftWireError(f"expected a {kind} reply")
    return reply


class RemoteRefusal(RuntimeError):
    """The server answered with an error."""


def _is_count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**48
