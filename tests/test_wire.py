"""The wire format: what goes in comes out; malformed frames are refused, not half-parsed."""

import struct

import pytest
import torch
from safetensors.torch import save as st_save

from asyncfl.core.model import initial_weights
from asyncfl.net import wire


def test_round_trip_with_weights():
    weights = initial_weights(0)
    header, out = wire.decode(wire.encode({"type": "fit", "n": 3}, weights))
    assert header == {"type": "fit", "n": 3}
    assert set(out) == set(weights)
    assert all(torch.equal(out[k], weights[k]) for k in weights)


def test_round_trip_without_weights():
    assert wire.decode(wire.encode({"type": "hello"})) == ({"type": "hello"}, None)


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\x01\x00",
        struct.pack("<I", 1000) + b"{}",  # header longer than the frame
        struct.pack("<I", 2) + b"[]",  # not an object
        struct.pack("<I", 2) + b"{}",  # no type
        struct.pack("<I", 3) + b"\xff\xfe{",  # not UTF-8 JSON
        struct.pack("<I", 15) + b'{"type":"fit"}' + b"not safetensors",
        "a text frame",
    ],
)
def test_malformed_frames_raise_wire_error(frame):
    with pytest.raises(wire.WireError):
        wire.decode(frame)


def test_encoded_weights_are_what_safetensors_writes_and_reads():
    # Prepare
    model = initial_weights(0)
    mixed = {"b": torch.arange(3, dtype=torch.float32), "a": torch.ones(2, 5), "i": torch.tensor([7], dtype=torch.int64)}
    head = wire.encode({"type": "fit_ok"})
    # Execute
    frame = wire.encode({"type": "fit_ok"}, model)
    parts = wire.encode_parts({"type": "fit_ok"}, model)
    # Assert: the model (all float32) byte for byte as the library lays it out; any dict parsed back by it.
    assert frame[len(head):] == st_save(model)
    assert b"".join(parts) == frame
    _, back = wire.decode(wire.encode({"type": "fit_ok"}, mixed))
    assert all(torch.equal(back[k], mixed[k]) and back[k].dtype == mixed[k].dtype for k in mixed)


def test_a_shape_of_thousands_of_dimensions_is_refused_at_once():
    # issue 40: a 55,000-dimension shape cost 3.1 s of big-integer products before it was refused
    import json
    import time

    meta = json.dumps({"w": {"dtype": "F32", "shape": [7] * 50_000, "data_offsets": [0, 4]}}).encode()
    body = struct.pack("<Q", len(meta)) + meta + bytes(4)
    t0 = time.perf_counter()
    with pytest.raises(wire.WireError, match="bad entry"):
        wire.parse_safetensors(memoryview(body), copy=True)
    assert time.perf_counter() - t0 < 0.5
