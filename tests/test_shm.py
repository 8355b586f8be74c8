"""Weights through shared memory: the memory file, what a server refuses to attach, and that a round through
shared memory trains exactly what the same round through websocket frames trains."""

import gc
import os

import pytest
import torch

from asyncfl.client.remote import SHARED_MEMORY, WEBSOCKET, RemoteServer
from asyncfl.core.model import FlatWeights, check_weights, copy_into, initial_weights, weight_spec
from asyncfl.core.protocol import TrainConfig
from asyncfl.core.task import ShardTrainer
from asyncfl.net import shm, wire
from asyncfl.server.wires.modern import Session, handle_frame
from tests.helpers import kill_session, start_servers

SPEC = weight_spec()


def memory_fds() -> list[str]:
    """This process's open descriptors of asyncfl memory files (each mapping holds one: Python's mmap
    keeps a duplicate of the descriptor it was made from)."""
    links = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd") if fd.isdigit()
             and os.path.exists(f"/proc/self/fd/{fd}")]
    return [link for link in links if link.startswith(f"/memfd:{shm.MEMFD_NAME}")]


@pytest.fixture
def segment():
    seg, offer = shm.Segment.create(SPEC)
    yield seg, offer
    seg.close_fd()


def attach(offer, spec=SPEC, **changes):
    offer = {**offer, **changes}
    return shm.Segment.attach(offer["pid"], offer["fd"], offer["nonce"], spec)


def test_both_sides_see_each_others_writes_and_the_descriptor_can_go(segment):
    # Prepare
    client, offer = segment
    weights = initial_weights(0)
    # Execute
    server = attach(offer)
    client.close_fd()  # as the client does once the server has attached
    copy_into(client.request, weights)
    copy_into(server.reply, initial_weights(1))
    # Assert: the mappings outlive the descriptor; the regions do not overlap
    with pytest.raises(OSError):
        os.fstat(offer["fd"])
    assert all(torch.equal(server.request[k], weights[k]) for k in weights)
    assert all(torch.equal(client.reply[k], initial_weights(1)[k]) for k in weights)
    assert all(torch.equal(client.request[k], weights[k]) for k in weights)
    assert shm.segment_bytes(SPEC) >= 2 * sum(v.numel() * 4 for v in weights.values())
    # Each region is the model back to back: whole-model copies and checks are one operation
    assert all(isinstance(region, FlatWeights) for region in (client.request, client.reply, server.request))


def test_the_memory_file_cannot_shrink(segment):
    # A shrunk file would kill the server with SIGBUS at its next access.
    _, offer = segment
    with pytest.raises(PermissionError):
        os.ftruncate(offer["fd"], 0)


def test_the_memory_is_allocated_when_the_segment_is_made(segment):
    # Taken up front: a machine short of memory refuses at create (the frames are used), not mid-run with
    # SIGBUS; and the first round does not pay a page allocation per page.
    _, offer = segment
    assert os.fstat(offer["fd"]).st_blocks * 512 >= shm.segment_bytes(SPEC)


def test_a_model_of_mixed_dtypes_is_refused_before_any_memory_file_is_made():
    # Each region is one flat tensor; the client then sends the weights in the frames (client/remote.py)
    before = memory_fds()
    with pytest.raises(ValueError, match="one dtype"):
        shm.Segment.create({"w": ((2, 2), torch.float32), "steps": ((1,), torch.int64)})
    assert memory_fds() == before


@pytest.mark.parametrize("pid, fd", [("1", 3), (True, 3), (0, 3), (-1, 3), (2**40, 3), (1, -1), (1, "3"), (1, None),
                                     (1, 2**30)])
def test_attach_refuses_what_is_not_a_pid_and_a_descriptor(segment, pid, fd):
    with pytest.raises(ValueError, match="pid and fd"):
        attach(segment[1], pid=pid, fd=fd)


def test_attach_refuses_other_descriptors_unsealed_files_wrong_sizes_and_nonces(segment, tmp_path):
    _, offer = segment
    with pytest.raises(ValueError, match="nonce"):
        attach(offer, nonce="ff" * shm.NONCE_BYTES)
    with pytest.raises(ValueError, match="hex digits"):
        attach(offer, nonce=offer["nonce"][:-2])
    with pytest.raises(ValueError, match="model's size"):
        attach(offer, spec={"w": ((3,), torch.float32)})
    with pytest.raises(ValueError, match="cannot open"):
        attach(offer, fd=2**20 - 1)  # not open in the client: another machine's process, say
    with open(tmp_path / "file", "wb") as f:
        with pytest.raises(ValueError, match="not an asyncfl memory file"):
            attach(offer, fd=f.fileno())  # never opened: it could be a device
    unsealed = os.memfd_create(shm.MEMFD_NAME, os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(unsealed, shm.segment_bytes(SPEC))
        with pytest.raises(ValueError, match="not sealed"):
            attach(offer, fd=unsealed)
    finally:
        os.close(unsealed)


def make_worker():
    gen = torch.Generator().manual_seed(0)
    return ShardTrainer("server-0", "toy", torch.randn(64, 1, 28, 28, generator=gen),
                       torch.randint(0, 10, (64,), generator=gen), seed=3)


FIT = {"dataset_key": "toy", "train_config": {"batch_size": 8, "max_nr_batches": 2}}


def test_a_round_through_shared_memory_trains_what_a_round_in_frames_trains(segment):
    # Prepare: two identical workers, one served in frames, one through the segment
    seg, offer = segment
    in_frames, shared, session = make_worker(), make_worker(), Session()
    reply, refused = handle_frame(shared, wire.encode({"type": "attach", **offer}), {}, session)
    assert refused is None and wire.decode(b"".join(reply))[0]["type"] == "attach_ok"
    weights = initial_weights(2)
    for round_ in range(3):
        # Execute
        header, expected = wire.decode(b"".join(handle_frame(in_frames, wire.encode({"type": "fit", **FIT}, weights), {})[0]))
        copy_into(seg.request, weights)
        reply, refused = handle_frame(shared, wire.encode({"type": "fit_shared", **FIT}), {}, session)
        shared_header, in_frame = wire.decode(b"".join(reply))
        # Assert: bit-identical weights in the reply region, none in the frame
        assert refused is None and shared_header["type"] == "fit_ok" and in_frame is None
        assert shared_header["n_samples"] == header["n_samples"] == 16
        assert all(torch.equal(seg.reply[k], expected[k]) for k in expected)
        weights = {k: v.clone() for k, v in seg.reply.items()}
    assert shared.fits == 3


def test_shared_memory_requests_that_are_refused(segment):
    seg, offer = segment
    worker, session = make_worker(), Session()
    # fit_shared before attach, and with weights in the frame
    for frame in (wire.encode({"type": "fit_shared", **FIT}),
                  wire.encode({"type": "attach", **offer, "extra": 1}),
                  wire.encode({"type": "attach", **offer}, initial_weights(0))):
        header = wire.decode(b"".join(handle_frame(worker, frame, {}, session)[0]))[0]
        assert header["type"] == "error"
    handle_frame(worker, wire.encode({"type": "attach", **offer}), {}, session)
    header = wire.decode(b"".join(handle_frame(worker, wire.encode({"type": "fit_shared", **FIT}, initial_weights(0)),
                                               {}, session)[0]))[0]
    assert header["type"] == "error" and "not in the frame" in header["message"]
    # a non-finite model in the request region
    bad = initial_weights(0)
    bad["conv1.weight"][0, 0, 0, 0] = float("inf")
    copy_into(seg.request, bad)
    header = wire.decode(b"".join(handle_frame(worker, wire.encode({"type": "fit_shared", **FIT}), {}, session)[0]))[0]
    assert header["type"] == "error" and "finite" in header["message"]
    assert worker.fits == 0


@pytest.fixture
def one_server(tmp_path):
    proc, uris = start_servers(tmp_path, "--n-servers", "1")
    yield uris[0]
    kill_session(proc)


def test_a_client_on_loopback_moves_weights_through_shared_memory_and_keeps_no_descriptor(one_server):
    before = memory_fds()
    # Prepare
    shared = RemoteServer(one_server, "server-0", shared_memory=True)
    framed = RemoteServer(one_server, "server-0", shared_memory=False)
    # Execute
    shared.connect(timeout_s=30)
    framed.connect(timeout_s=30)
    results = [w.fit("mnist-5k", TrainConfig(), initial_weights(0)) for w in (shared, framed, shared)]
    # Assert
    assert (shared.weights_via, framed.weights_via) == (SHARED_MEMORY, WEBSOCKET)
    for r in results:
        check_weights(r.weights, SPEC)
        assert r.n_samples == 32 and not torch.equal(r.weights["fc2.bias"], initial_weights(0)["fc2.bias"])
    shared.close()
    shared.connect(timeout_s=30)  # a new connection attaches a new segment
    assert shared.weights_via == SHARED_MEMORY and shared.fit("mnist-5k", TrainConfig(), initial_weights(0)).n_samples == 32
    shared.close()
    framed.close()
    del results, r
    gc.collect()
    assert memory_fds() == before  # the offered descriptors closed, the mappings (and their descriptors) gone with the views


@pytest.mark.parametrize("network", [{"loss_pct": 10}, {"delay_ms": 5.0}, {"rate_mbit": 100}, {"loss_pct": "x"}])
def test_a_server_behind_emulated_conditions_is_not_offered_shared_memory(network):
    # Its weights must cross the emulated link, even on loopback.
    worker = RemoteServer("ws://127.0.0.1:1", "server-0", shared_memory=True)
    worker.info = {"network": {"netns": None, **network}}
    assert worker.wire.attach(worker, timeout_s=1) is None  # decided before anything is sent (there is no connection)
