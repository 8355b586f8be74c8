"""Weights through shared memory: the segment, what a server refuses to attach, and that a round through
shared memory trains exactly what the same round through websocket frames trains."""

import os
import subprocess

import pytest
import torch

from src import shm, wire
from src.model import check_weights, initial_weights, weight_spec
from src.remote import SHARED_MEMORY, WEBSOCKET, WebsocketClientWorker
from src.worker import Session, ShardWorker, TrainConfig, handle_frame
from tests.helpers import PYTHON, ROOT, kill_session

SPEC = weight_spec()


def our_files() -> set[str]:
    return {f for f in os.listdir(shm.SHM_DIR) if f.startswith(shm.NAME_PREFIX)}


@pytest.fixture
def segment():
    before = our_files()
    seg, nonce = shm.Segment.create(SPEC)
    yield seg, nonce
    seg.unlink()
    assert our_files() == before  # nothing left behind


def test_both_sides_see_each_others_writes_and_the_name_can_go(segment):
    # Prepare
    client, nonce = segment
    weights = initial_weights(0)
    # Execute
    server = shm.Segment.attach(client.name, nonce, SPEC)
    client.unlink()  # as the client does once the server has attached
    shm.copy_into(client.request, weights)
    shm.copy_into(server.reply, initial_weights(1))
    # Assert: the mappings outlive the name; regions do not overlap
    assert not os.path.exists(os.path.join(shm.SHM_DIR, client.name))
    assert all(torch.equal(server.request[k], weights[k]) for k in weights)
    assert all(torch.equal(client.reply[k], initial_weights(1)[k]) for k in weights)
    assert all(torch.equal(client.request[k], weights[k]) for k in weights)
    assert shm.segment_bytes(SPEC) >= 2 * sum(v.numel() * 4 for v in weights.values())


def test_a_new_segment_is_private_to_its_user(segment):
    seg, _ = segment
    assert os.stat(os.path.join(shm.SHM_DIR, seg.name)).st_mode & 0o777 == 0o600


@pytest.mark.parametrize("name", ["../../etc/passwd", "asyncfl-" + "g" * 32, "asyncfl-" + "0" * 31, "ASYNCFL-" + "0" * 32,
                                  "asyncfl-" + "0" * 32 + "/x", 7, None])
def test_attach_refuses_names_of_another_form(name):
    with pytest.raises(ValueError, match="asyncfl- and 32 hex"):
        shm.Segment.attach(name, "00" * shm.NONCE_BYTES, SPEC)


def test_attach_refuses_a_missing_segment_a_wrong_nonce_a_wrong_size_and_a_symlink(segment, tmp_path):
    seg, nonce = segment
    with pytest.raises(ValueError, match="cannot open"):
        shm.Segment.attach("asyncfl-" + "0" * 32, nonce, SPEC)  # another machine's segment, say
    with pytest.raises(ValueError, match="nonce"):
        shm.Segment.attach(seg.name, "ff" * shm.NONCE_BYTES, SPEC)
    with pytest.raises(ValueError, match="hex digits"):
        shm.Segment.attach(seg.name, nonce[:-2], SPEC)
    small = {"w": ((3,), torch.float32)}
    with pytest.raises(ValueError, match="model's size"):
        shm.Segment.attach(seg.name, nonce, small)
    link = "asyncfl-" + "1" * 32
    os.symlink(os.path.join(shm.SHM_DIR, seg.name), os.path.join(shm.SHM_DIR, link))
    try:
        with pytest.raises(ValueError, match="cannot open"):
            shm.Segment.attach(link, nonce, SPEC)  # never followed: it could point at any file
    finally:
        os.unlink(os.path.join(shm.SHM_DIR, link))


def make_worker():
    gen = torch.Generator().manual_seed(0)
    return ShardWorker("server-0", "toy", torch.randn(64, 1, 28, 28, generator=gen),
                       torch.randint(0, 10, (64,), generator=gen), seed=3)


FIT = {"dataset_key": "toy", "train_config": {"batch_size": 8, "max_nr_batches": 2}}


def test_a_round_through_shared_memory_trains_what_a_round_in_frames_trains(segment):
    # Prepare: two identical workers, one served in frames, one through the segment
    seg, nonce = segment
    in_frames, shared, session = make_worker(), make_worker(), Session()
    reply, refused = handle_frame(shared, wire.encode({"type": "attach", "name": seg.name, "nonce": nonce}), {}, session)
    assert refused is None and wire.decode(b"".join(reply))[0]["type"] == "attach_ok"
    weights = initial_weights(2)
    for round_ in range(3):
        # Execute
        header, expected = wire.decode(b"".join(handle_frame(in_frames, wire.encode({"type": "fit", **FIT}, weights), {})[0]))
        shm.copy_into(seg.request, weights)
        reply, refused = handle_frame(shared, wire.encode({"type": "fit_shared", **FIT}), {}, session)
        shared_header, in_frame = wire.decode(b"".join(reply))
        # Assert: bit-identical weights in the reply region, none in the frame
        assert refused is None and shared_header["type"] == "fit_ok" and in_frame is None
        assert shared_header["n_samples"] == header["n_samples"] == 16
        assert all(torch.equal(seg.reply[k], expected[k]) for k in expected)
        weights = {k: v.clone() for k, v in seg.reply.items()}
    assert shared.fits == 3


def test_shared_memory_requests_that_are_refused(segment):
    seg, nonce = segment
    worker, session = make_worker(), Session()
    # fit_shared before attach, and with weights in the frame
    for frame in (wire.encode({"type": "fit_shared", **FIT}),
                  wire.encode({"type": "attach", "name": seg.name, "nonce": nonce, "extra": 1}),
                  wire.encode({"type": "attach", "name": seg.name, "nonce": nonce}, initial_weights(0))):
        header = wire.decode(b"".join(handle_frame(worker, frame, {}, session)[0]))[0]
        assert header["type"] == "error"
    handle_frame(worker, wire.encode({"type": "attach", "name": seg.name, "nonce": nonce}), {}, session)
    header = wire.decode(b"".join(handle_frame(worker, wire.encode({"type": "fit_shared", **FIT}, initial_weights(0)),
                                               {}, session)[0]))[0]
    assert header["type"] == "error" and "not in the frame" in header["message"]
    # a non-finite model in the request region
    bad = initial_weights(0)
    bad["conv1.weight"][0, 0, 0, 0] = float("inf")
    shm.copy_into(seg.request, bad)
    header = wire.decode(b"".join(handle_frame(worker, wire.encode({"type": "fit_shared", **FIT}), {}, session)[0]))[0]
    assert header["type"] == "error" and "finite" in header["message"]
    assert worker.fits == 0


@pytest.fixture
def one_server():
    proc = subprocess.Popen([PYTHON, "-m", "src.servers", "--n-servers", "1", "--base-port", "0"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    for line in proc.stdout:  # readiness signal: the READY line
        if line.startswith("READY "):
            break
    yield line.split()[1]
    kill_session(proc)


def test_a_client_on_loopback_moves_weights_through_shared_memory_and_leaves_no_file(one_server):
    # Prepare
    before = our_files()
    shared = WebsocketClientWorker(one_server, "server-0", shared_memory=True)
    framed = WebsocketClientWorker(one_server, "server-0", shared_memory=False)
    # Execute
    shared.connect(timeout_s=30)
    framed.connect(timeout_s=30)
    results = [w.fit("mnist-5k", TrainConfig(), initial_weights(0)) for w in (shared, framed, shared)]
    # Assert
    assert (shared.weights_via, framed.weights_via) == (SHARED_MEMORY, WEBSOCKET)
    assert our_files() == before  # unlinked as soon as the server attached
    for r in results:
        check_weights(r.weights, SPEC)
        assert r.n_samples == 32 and not torch.equal(r.weights["fc2.bias"], initial_weights(0)["fc2.bias"])
    shared.close()
    shared.connect(timeout_s=30)  # a new connection attaches a new segment
    assert shared.weights_via == SHARED_MEMORY and shared.fit("mnist-5k", TrainConfig(), initial_weights(0)).n_samples == 32
    shared.close()
    framed.close()
