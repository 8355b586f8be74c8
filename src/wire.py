"""The wire format between the model owner (client) and the data owners (servers).

One websocket binary frame per message:

    [4 bytes: header length, little-endian u32][header: UTF-8 JSON object][weights: safetensors bytes]

The JSON header always has a ``type``; the weights part is empty for messages without a model. Weights
are only ever parsed by safetensors (a flat, typed tensor format, no code): network bytes never reach a
Python object deserialiser.

Messages (client -> server, server -> client):
- ``hello`` -> ``hello_ok``: protocol version, server name, dataset key, shard size and class counts,
  speed ratio, model architecture signature.
- ``fit`` + weights -> ``fit_ok`` + weights: one round of local training (see ``worker.TrainConfig``).
- anything the server cannot serve -> ``error`` with a ``message``.
"""

from __future__ import annotations

import json
import struct

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 8 * 1024 * 1024  # the model is 1.7 MB; a larger frame is refused by the websocket layer
MAX_HEADER_BYTES = 64 * 1024
RECV_BUFSIZE = 1024 * 1024  # bytes per socket read in websockets' reader thread (its default 64 KiB takes
# 27 passes through its Python frame parser for one model)
_LEN = struct.Struct("<I")


class WireError(ValueError):
    """A frame that does not follow the format above."""


def encode(header: dict, weights: dict[str, torch.Tensor] | None = None) -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    body = st_save({k: v.contiguous() for k, v in weights.items()}) if weights else b""
    return _LEN.pack(len(head)) + head + body


def decode(frame: bytes) -> tuple[dict, dict[str, torch.Tensor] | None]:
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise WireError("expected a binary frame")
    if len(frame) < _LEN.size:
        raise WireError("frame shorter than its length prefix")
    (head_len,) = _LEN.unpack_from(frame)
    if head_len > MAX_HEADER_BYTES or _LEN.size + head_len > len(frame):
        raise WireError(f"header length {head_len} does not fit the frame")
    try:
        header = json.loads(bytes(frame[_LEN.size : _LEN.size + head_len]))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WireError(f"header is not JSON: {e}") from None
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise WireError("header must be a JSON object with a string 'type'")
    body = bytes(frame[_LEN.size + head_len :])
    if not body:
        return header, None
    try:
        weights = st_load(body)
    except Exception as e:  # safetensors raises its own error types for malformed bytes
        raise WireError(f"weights are not valid safetensors: {e}") from None
    return header, weights
