"""The wire format between the model owner (client) and the data owners (servers).

One websocket binary frame per message:

    [4 bytes: header length, little-endian u32][header: UTF-8 JSON object][weights: safetensors bytes]

The JSON header always has a ``type``; the weights part is empty for messages without a model. The
weights are laid out as safetensors writes them (a flat, typed tensor format, no code), but network bytes
are parsed by this module's own zero-copy reader, ``parse_safetensors``: Python's ``json`` for the two
headers, ``struct`` for the lengths, tensors as views of the frame, every dtype, shape and offset checked;
they never reach a Python object deserialiser. tests/test_wire.py checks it against the safetensors
library on the same bytes; tests/test_fuzz.py sends it malformed frames through a live server.

Messages (client -> server, server -> client):
- ``hello`` -> ``hello_ok``: protocol version, server name, dataset key, shard size and class counts,
  speed ratio, model architecture signature.
- ``fit`` + weights -> ``fit_ok`` + weights: one round of local training (see ``core.protocol.TrainConfig``).
- ``attach`` (``pid``, ``fd``, ``nonce``) -> ``attach_ok``: map the client's shared memory (see net/shm.py);
  then ``fit_shared`` -> ``fit_ok``, both without weights in the frame: they are in the segment.
  A server that cannot attach answers ``error`` and the client goes on with ``fit``.
- anything the server cannot serve -> ``error`` with a ``message``.
"""

from __future__ import annotations

import json
import math
import struct

import torch

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 8 * 1024 * 1024  # the model is 1.7 MB; a larger frame is refused by the websocket layer
MAX_HEADER_BYTES = 64 * 1024
_LEN = struct.Struct("<I")


class WireError(ValueError):
    """A frame that does not follow the format above."""


_DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.bfloat16: "BF16",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
           torch.bool: "BOOL"}


# A model's tensors have at most 4 dimensions; more are refused before the shape is multiplied out (a
# 55,000-dimension shape cost 3.1 s of big-integer products to refuse).
MAX_DIMS = 8

def encode_parts(header: dict, weights: dict[str, torch.Tensor] | None = None) -> list:
    """The frame as a list of buffers whose concatenation is the frame: the prefix and JSON header, the
    safetensors header, then every tensor's memory as it is (no copy; the sender writes them out with
    one ``sendmsg``). The layout is exactly what ``safetensors.torch.save`` writes: names sorted,
    offsets in that order, the header padded with spaces to a multiple of 8 bytes."""
    head = json.dumps(header, separators=(",", ":")).encode()
    parts: list = [_LEN.pack(len(head)) + head]
    if not weights:
        return parts
    meta, tensors, offset = {}, [], 0
    for name in sorted(weights):
        t = weights[name].detach().contiguous()
        if t.dtype not in _DTYPES or t.device.type != "cpu":
            raise ValueError(f"cannot send tensor {name!r} of {t.dtype} on {t.device}")
        n = t.numel() * t.element_size()
        meta[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        tensors.append(t)
        offset += n
    st_head = json.dumps(meta, separators=(",", ":")).encode()
    st_head += b" " * (-len(st_head) % 8)
    parts.append(struct.pack("<Q", len(st_head)) + st_head)
    # A view of each tensor's bytes; the list keeps the tensors alive as long as the views.
    parts += [memoryview(t.view(torch.uint8).reshape(-1).numpy()) if t.numel() else b"" for t in tensors]
    return parts


def encode(header: dict, weights: dict[str, torch.Tensor] | None = None) -> bytes:
    """The frame in one bytes object (see ``encode_parts``)."""
    return b"".join(encode_parts(header, weights))


def decode(frame, copy: bool = True) -> tuple[dict, dict[str, torch.Tensor] | None]:
    """Parse a frame. The weights are read in place from the frame's buffer (safetensors' own layout,
    validated strictly below) and, with ``copy``, cloned out of it; ``copy=False`` leaves them views of
    the buffer, for a caller that is done with them before the buffer is reused (the server, which copies
    them into its model at once)."""
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise WireError("expected a binary frame")
    view = memoryview(frame).cast("B")
    if len(view) < _LEN.size:
        raise WireError("frame shorter than its length prefix")
    (head_len,) = _LEN.unpack_from(view)
    if head_len > MAX_HEADER_BYTES or _LEN.size + head_len > len(view):
        raise WireError(f"header length {head_len} does not fit the frame")
    try:
        header = json.loads(bytes(view[_LEN.size : _LEN.size + head_len]))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise WireError(f"header is not JSON: {type(e).__name__}") from None
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise WireError("header must be a JSON object with a string 'type'")
    body = view[_LEN.size + head_len :]
    if not len(body):
        return header, None
    if body.readonly:  # torch reads tensors only from writable memory: take a private copy once
        body, copy = memoryview(bytearray(body)), False
    return header, parse_safetensors(body, copy)


_FROM_NAME = {v: k for k, v in _DTYPES.items()}
_ITEMSIZE = {k: torch.empty(0, dtype=k).element_size() for k in _DTYPES}
_MAX_ST_HEADER = 1024 * 1024


def parse_safetensors(body: memoryview, copy: bool) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors buffer (8-byte header length, JSON header, data), checked the way the
    format demands: known dtypes, non-negative integer shapes, offsets inside the data whose span is
    exactly the tensor's size, and spans that tile the data without gaps or overlaps. No code runs."""
    if len(body) < 8:
        raise WireError("weights are not valid safetensors: too short")
    (n,) = struct.unpack_from("<Q", body)
    if n > _MAX_ST_HEADER or 8 + n > len(body):
        raise WireError(f"weights are not valid safetensors: header length {n}")
    try:
        meta = json.loads(bytes(body[8 : 8 + n]))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise WireError(f"weights are not valid safetensors: header is not JSON ({type(e).__name__})") from None
    if not isinstance(meta, dict):
        raise WireError("weights are not valid safetensors: header is not an object")
    extra = meta.pop("__metadata__", {})
    if not isinstance(extra, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in extra.items()):
        raise WireError("weights are not valid safetensors: __metadata__ must map strings to strings")
    data = body[8 + n :]
    entries = []
    for name, e in meta.items():
        if not (isinstance(e, dict) and set(e) == {"dtype", "shape", "data_offsets"} and e["dtype"] in _FROM_NAME
                and isinstance(e["shape"], list) and len(e["shape"]) <= MAX_DIMS
                and all(_is_count(d) for d in e["shape"])
                and isinstance(e["data_offsets"], list) and len(e["data_offsets"]) == 2
                and all(_is_count(o) for o in e["data_offsets"])):
            raise WireError(f"weights are not valid safetensors: bad entry for {name[:40]!r}")
        dtype = _FROM_NAME[e["dtype"]]
        begin, end = e["data_offsets"]
        numel = math.prod(e["shape"])
        if not begin <= end <= len(data) or end - begin != numel * _ITEMSIZE[dtype]:
            raise WireError(f"weights are not valid safetensors: invalid offset for tensor {name[:40]!r}")
        entries.append((begin, end, name, dtype, e["shape"], numel))
    entries.sort()
    if [b for b, *_ in entries] != [0] + [e for _, e, *_ in entries[:-1]] or (entries and entries[-1][1] != len(data)):
        raise WireError("weights are not valid safetensors: tensors do not tile the data")
    out = {}
    for begin, _, name, dtype, shape, numel in entries:
        t = torch.frombuffer(data, dtype=dtype, count=numel, offset=begin) if numel else torch.empty(0, dtype=dtype)
        t = t.reshape(shape)
        out[name] = t.clone() if copy else t
    return out


def _is_count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**48
