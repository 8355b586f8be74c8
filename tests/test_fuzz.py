"""A live data server under a flood of malformed requests from an authenticated peer.

More than 10,000 bad frames (random bytes, truncated and oversized frames, lying length fields, wrong
message types and keys, absurd train configs, wrong tensor names/shapes/dtypes, NaN and inf weights,
hostile safetensors headers, text frames) go to one server while a well-behaved client keeps training on
it. Each bad frame must get an ``error`` reply (an oversized one: a closed connection), none may train,
the server process must survive with bounded memory, and a valid round must still work afterwards.
"""

import json
import os
import random
import struct
import threading

import torch
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from asyncfl.client.remote import RemoteServer
from asyncfl.core.model import initial_weights
from asyncfl.core.protocol import TrainConfig
from asyncfl.net import pysyft, wire
from asyncfl.process.cpu import rss_kib
from tests.helpers import kill_session, start_servers

TOKEN = "fuzz-token-0123456789abcdef"
N_FRAMES = 10_400
FIT = {"type": "fit", "dataset_key": "mnist-5k", "train_config": {"batch_size": 32}}


def weight_variants() -> list[dict]:
    """Weights that are wrong in one way each."""
    good = initial_weights(0)
    variants = []
    for name in list(good):
        missing = {k: v for k, v in good.items() if k != name}
        resized = {**good, name: torch.zeros(*[d + 1 for d in good[name].shape])}
        as_f64 = {**good, name: good[name].double()}
        as_int = {**good, name: good[name].to(torch.int32)}
        flat = {**good, name: good[name].flatten()} if good[name].dim() > 1 else {**good, name: good[name][None]}
        nan = {k: v.clone() for k, v in good.items()}
        nan[name].view(-1)[0] = float("nan")
        inf = {k: v.clone() for k, v in good.items()}
        inf[name].view(-1)[-1] = float("-inf")
        variants += [missing, resized, as_f64, as_int, flat, nan, inf]
    variants.append({**good, "extra.weight": torch.zeros(3)})
    variants.append({"x": torch.zeros(1)})
    return variants


def hostile_safetensors(rng: random.Random) -> bytes:
    """A safetensors header that lies: offsets past the end, overlaps, unknown dtypes, absurd shapes."""
    entry = rng.choice([
        {"dtype": "F32", "shape": [10**9], "data_offsets": [0, 4 * 10**9]},
        {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]},
        {"dtype": "Q99", "shape": [1], "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]},
    ])
    head = json.dumps({"fc2.bias": entry}).encode()
    declared = len(head) if rng.random() < 0.7 else rng.choice([2**63, 2**32, 0, len(head) + 100])
    return struct.pack("<Q", declared % 2**64) + head + rng.randbytes(rng.randrange(0, 64))


def frames(rng: random.Random, variants: list[bytes], valid_fit: bytes):
    """Yield (kind, frame) pairs, N_FRAMES in all, the bad kinds interleaved at random."""
    absurd_configs = [{"batch_size": -1}, {"batch_size": 10**12}, {"batch_size": "32"}, {"batch_size": None},
                      {"batch_size": True}, {"lr": float("nan")}, {"lr": 1e300}, {"lr": -0.1}, {"lr": "0.1"},
                      {"max_nr_batches": 10**9}, {"max_nr_batches": 2.5}, {"optimizer": "Adam"},
                      {"momentum": 0.9}, {"shuffle": "no"}, [], "config", None, {"batch_size": [32]}]
    for i in range(N_FRAMES):
        kind = rng.choice(["random", "random", "truncated", "length", "types", "types", "config", "config",
                           "weights", "safetensors", "text", "dataset", "shared"])
        if i % 2000 == 1999:
            kind = "oversized"
        if kind == "random":
            yield kind, rng.randbytes(rng.randrange(0, 3000))
        elif kind == "truncated":
            cut = rng.randrange(0, 4096) if rng.random() < 0.9 else rng.randrange(0, len(valid_fit) - 1)
            yield kind, valid_fit[:cut]
        elif kind == "length":
            yield kind, struct.pack("<I", rng.randrange(0, 2**32)) + rng.randbytes(rng.randrange(0, 100))
        elif kind == "types":
            header = rng.choice([{"type": rng.choice(["fitt", "", "hello_ok", "fit_ok", "error", "x" * 500])},
                                 {"type": rng.randrange(100)}, {"type": None}, {"kind": "fit"}, [1, 2], "fit", 3,
                                 {"type": "hello", "extra": 1}, {"type": "fit"}, {**FIT, "dataset_key": 7}])
            yield kind, wire.encode(header) if isinstance(header, dict) else struct.pack("<I", len(json.dumps(header))) + json.dumps(header).encode()
        elif kind == "config":
            yield kind, wire.encode({**FIT, "train_config": rng.choice(absurd_configs)})
        elif kind == "weights":
            yield kind, rng.choice(variants)
        elif kind == "safetensors":
            head = json.dumps(FIT).encode()
            yield kind, struct.pack("<I", len(head)) + head + hostile_safetensors(rng)
        elif kind == "text":
            yield kind, rng.choice(["hello", json.dumps({"type": "hello"}), "\x00" * 100])
        elif kind == "shared":  # shared memory (net/shm.py): descriptors that are not an asyncfl memory file
            nonce = rng.randbytes(16).hex()
            pid = rng.choice([1, os.getpid(), 2**22 - 1, -5, 0, "1", True, None, 2**40])
            fd = rng.choice([0, 1, 2, 3, 4, 2**20 - 1, -1, "0", None, 1.5])
            header = rng.choice([{"type": "attach", "pid": pid, "fd": fd, "nonce": nonce},
                                 {"type": "attach", "pid": pid, "fd": fd, "nonce": rng.choice([nonce[:8], 5, None])},
                                 {"type": "attach", "pid": pid, "fd": fd}, {"type": "attach", "name": "asyncfl"},
                                 {"type": "fit_shared", **{k: FIT[k] for k in FIT if k != "type"}}])
            yield kind, wire.encode(header, initial_weights(0) if rng.random() < 0.1 else None)
        elif kind == "dataset":
            yield kind, valid_fit.replace(b'"mnist-5k"', b'"mnist-6k"', 1)
        else:
            yield kind, b"\x00" * (wire.MAX_FRAME_BYTES + 1)


def test_ten_thousand_malformed_frames_do_not_break_a_server(tmp_path):
    # Prepare: one server with a token; a well-behaved client trains on it throughout.
    proc, uris = start_servers(tmp_path, "--n-servers", "1", env={"ASYNCFL_TOKEN": TOKEN})
    try:
        good = RemoteServer(uris[0], "good", token=TOKEN)
        info = good.connect(timeout_s=30)
        good.fit("mnist-5k", TrainConfig(), initial_weights(0))
        rss_before = rss_kib(info["pid"])
        rng = random.Random(20200)
        variants = [wire.encode(FIT, w) for w in weight_variants()]
        valid_fit = wire.encode(FIT, initial_weights(0))
        good_rounds, stop = [], threading.Event()

        def train_meanwhile():
            while not stop.is_set():
                good_rounds.append(good.fit("mnist-5k", TrainConfig(), initial_weights(0), timeout_s=30).n_samples)

        trainer = threading.Thread(target=train_meanwhile, name="good-client")
        trainer.start()
        # Execute
        sent, replies, closed = 0, {}, 0
        headers = {"Authorization": f"Bearer {TOKEN}"}
        ws = connect(uris[0], additional_headers=headers, max_size=wire.MAX_FRAME_BYTES, compression=None,
                     proxy=None, legacy=True)
        for kind, frame in frames(rng, variants, valid_fit):
            sent += 1
            try:
                ws.send(frame)
                reply = ws.recv(timeout=30)
                # A text frame is read as the original's wire (net/pysyft.py) and refused in it.
                reply_type = ("error" if pysyft.from_text(reply)[0] == pysyft.ERROR else "other") \
                    if isinstance(reply, str) else wire.decode(reply)[0]["type"]
                replies[reply_type] = replies.get(reply_type, 0) + 1
                assert reply_type == "error", (kind, frame[:80])
            except ConnectionClosed:
                assert kind == "oversized", kind  # only a frame past the size limit closes the connection
                closed += 1
                ws = connect(uris[0], additional_headers=headers, max_size=wire.MAX_FRAME_BYTES,
                             compression=None, proxy=None, legacy=True)
        ws.close()
        stop.set()
        trainer.join()
        # Assert: every bad frame was refused, none trained, the same process still serves valid rounds.
        assert sent == N_FRAMES >= 10_000
        assert replies == {"error": N_FRAMES - closed} and closed == N_FRAMES // 2000
        after = good.fit("mnist-5k", TrainConfig(), initial_weights(0))
        assert after.n_samples == 32 and len(good_rounds) > 20
        good.close()
        again = RemoteServer(uris[0], "again", token=TOKEN)
        hello = again.connect(timeout_s=10)
        again.close()
        assert hello["pid"] == info["pid"]  # not a restarted process
        assert hello["fits"] == 1 + len(good_rounds) + 1  # only the good client's rounds trained
        growth_mib = (rss_kib(info["pid"]) - rss_before) / 1024
        print(f"fuzz: {sent} frames sent, {replies.get('error', 0)} error replies, {closed} connections closed "
              f"(oversized), {len(good_rounds)} good rounds meanwhile; server RSS {rss_before / 1024:.0f} MiB -> "
              f"{rss_kib(info['pid']) / 1024:.0f} MiB, peak {rss_kib(info['pid'], 'VmHWM') / 1024:.0f} MiB")
        assert growth_mib < 64, f"resident memory grew by {growth_mib:.0f} MiB"
        assert "exited" not in (tmp_path / "servers.log").read_text()
    finally:
        kill_session(proc)
