"""The paper regime: its clock and pace (pure), the original's websocket timeout, CPU shares, the refusal
of a bad split before anything starts, fingerprints from the split CLI, and paced runs side by side."""

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from datetime import datetime

import numpy as np
import pytest

from asyncfl.core import regime
from asyncfl.core.model import initial_weights
from asyncfl.core.protocol import TrainConfig
from asyncfl.core.split import SplitSettings, make_split
from asyncfl.core.task import ShardTrainer
from asyncfl.net import transport
from asyncfl.process import cpu
from tests.helpers import PYTHON, ROOT, read_csv, run_script

needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("tc") is None,
                                reason="network namespaces need root and iproute2")


# ---- pure ----------------------------------------------------------------------------------------------

def test_time_scale_divides_every_duration_of_the_paper():
    one, ten = regime.paper_regime(1), regime.paper_regime(10)
    assert (one.duration_s, one.eval_interval_s, one.round_timeout_s, one.rto_min_ms) == (2400, 15, 60, 200)
    for field in ("pace_s", "round_timeout_s", "eval_interval_s", "duration_s", "rto_min_ms"):
        assert getattr(ten, field) == pytest.approx(getattr(one, field) / 10)
    assert ten.pace_spread == one.pace_spread  # a proportion, not a duration
    with pytest.raises(ValueError):
        regime.paper_regime(0.5)


def test_server_paces_are_spread_evenly_and_assigned_by_the_seed():
    a = regime.server_paces(np.random.default_rng([0, 1]), 4, 3.0, 0.1)
    b = regime.server_paces(np.random.default_rng([0, 1]), 4, 3.0, 0.1)
    orders = {tuple(np.argsort(regime.server_paces(np.random.default_rng([s, 1]), 4, 3.0, 0.1))) for s in range(10)}
    assert a == b and sorted(a) == pytest.approx([2.7, 2.9, 3.1, 3.3])
    assert len(orders) > 1  # which server is slow changes with the seed


def test_the_pace_spread_is_a_setting_and_can_be_read_back_from_the_paces():
    assert regime.paper_regime(10).pace_spread == regime.PACE_SPREAD
    for spread in (0.0, 0.05, 0.2):
        paces = regime.server_paces(np.random.default_rng(0), 4, 3.0, regime.paper_regime(10, spread).pace_spread)
        assert regime.pace_spread_of(paces) == pytest.approx(spread) and np.mean(paces) == pytest.approx(3.0)
    with pytest.raises(ValueError):
        regime.paper_regime(10, 1.0)
    from asyncfl.settings import ServerArgs, problems
    assert problems(ServerArgs(pace_spread=0.0)) == []
    assert [p for p in problems(ServerArgs(pace_spread=1.5)) if p.startswith("--pace-spread: in [0, 1)")]


def test_idle_makes_a_round_last_its_pace_times_the_speed_ratio():
    assert regime.paced_idle_s(0.02, 3.0) == pytest.approx(2.98)
    assert regime.paced_idle_s(0.02, 3.0, speed_ratio=2) == pytest.approx(5.98)
    assert regime.paced_idle_s(0.5, 0.1) == 0.0  # compute longer than the pace: no idle
    assert regime.paced_idle_s(0.5, 0.0, speed_ratio=4) == pytest.approx(1.5)  # --speeds alone, as before


def test_simulated_staleness_follows_the_pace_spread():
    # Exact paces 1.0 and 1.25 over 100 s: 100 and 80 rounds, so the largest gap is 20.
    assert regime.simulate_largest_staleness([1.0, 1.25], 100.0) == 20
    assert regime.simulate_largest_staleness([1.0, 1.0, 1.0], 100.0) == 0  # exact equal paces: lockstep
    wider = regime.simulate_largest_staleness(regime.server_paces(np.random.default_rng(0), 4, 30, 0.2), 2400)
    narrower = regime.simulate_largest_staleness(regime.server_paces(np.random.default_rng(0), 4, 30, 0.1), 2400)
    assert wider > narrower > 8


def test_a_paced_round_lasts_at_least_its_pace():
    # Prepare: a real shard worker with a pace of 0.3 s.
    rng = np.random.default_rng(0)
    import torch
    images = torch.from_numpy(rng.standard_normal((64, 1, 28, 28)).astype(np.float32))
    worker = ShardTrainer("s", "d", images, torch.from_numpy(rng.integers(0, 10, 64)), pace_s=0.3)
    # Execute
    t = time.perf_counter()
    result = worker.fit("d", TrainConfig(), initial_weights(0))
    wall_s = time.perf_counter() - t
    # Assert: the round took its pace on the wall clock, and the reply says how it was spent.
    assert wall_s >= 0.3
    assert result.compute_s + result.idle_s == pytest.approx(0.3, abs=1e-6)


def test_cpu_shares_count_this_process_and_flag_waiting():
    before = {"me": cpu.sample(os.getpid())}
    t = time.monotonic()
    x = 0
    while time.monotonic() - t < 0.2:
        x += 1
    after = {"me": cpu.sample(os.getpid()), "gone": None}
    shares = cpu.shares(before, after, 0.2)
    assert set(shares) == {"me"} and 0.05 < shares["me"]["cpu_s"] <= 0.3
    waited = {"a": {"cpu_s": 1, "cpu_frac": 0.1, "wait_s": 1, "wait_frac": 0.1},
              "b": {"cpu_s": 1, "cpu_frac": 0.1, "wait_s": 0, "wait_frac": 0.0},
              "evaluator": {"cpu_s": 1, "cpu_frac": 0.1, "wait_s": 5, "wait_frac": 0.5}}
    assert cpu.starved(waited) == ["a"]


# ---- the original's websocket timeout: silence on the socket, not a deadline for the round ---------------

def _pair(timeout_s: float):
    a, b = socket.socketpair()
    a.settimeout(timeout_s)
    return transport.Connection.open(a, is_client=True, max_size=1 << 20), b


def test_a_slow_reply_that_keeps_moving_is_not_cut():
    conn, peer = _pair(0.4)
    payload = b"x" * 20
    frame = bytes([0x82, len(payload)]) + payload

    def trickle():  # one byte every 0.1 s: 2.2 s in all, five times the timeout
        for i in range(len(frame)):
            time.sleep(0.1)
            peer.send(frame[i : i + 1])

    threading.Thread(target=trickle, daemon=True).start()
    assert bytes(conn.recv()) == payload
    peer.close()


def test_silence_longer_than_the_timeout_cuts_the_connection():
    conn, peer = _pair(0.3)
    t = time.monotonic()
    with pytest.raises(transport.Silence, match="no byte received for 0.3 s"):
        conn.recv()
    assert time.monotonic() - t >= 0.3 and conn.closed
    peer.close()


# ---- the split: fingerprints from the CLI, refused before anything starts --------------------------------

def test_split_cli_prints_the_fingerprints_servers_use():
    run = run_script([PYTHON, "split_dataset.py", "--n-servers", "4", "--stdev", "600", "--json"], timeout_s=60)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    from asyncfl.core import data
    ds = data.load("mnist-5k")
    _, split = make_split(SplitSettings(n_servers=4, stdev=600), ds.train_labels, 10, ds.name, ds.source)
    assert out["class_counts"] == split["fingerprints"]["class_counts"]
    assert out["index_sha256"] == split["fingerprints"]["index_sha256"] and out["split_seed"] == 42
    assert [sum(row) for row in out["class_counts"]] == [len(s) for s in make_split(
        SplitSettings(n_servers=4, stdev=600), ds.train_labels, 10, ds.name, ds.source)[0]]


def test_a_split_with_a_server_under_one_batch_stops_before_anything_starts(tmp_path):
    # mnist-5k over 6 servers with D=20000 and split seed 0 leaves a server (almost) nothing.
    flags = ["--n-servers", "6", "--stdev", "20000", "--split-seed", "0"]
    cli = run_script([PYTHON, "split_dataset.py", *flags], timeout_s=60)
    out = tmp_path / "run"
    run = run_script(["./train.sh", *flags, "--base-port", "0", "--out-dir", str(out)], timeout_s=60)
    assert cli.returncode == 2 and "refused" in cli.stderr and "--stdev" in cli.stderr
    assert run.returncode == 2  # a setting the servers refused
    log = (out / "servers.log").read_text()
    assert "refused" in log and "READY" not in log and "listening" not in log
    assert not (out / "config.json").exists()


# ---- paced runs side by side (root: every server in a namespace) -------------------------------------

def run_start(run_dir) -> float:
    """When a run's server/main.py logged its first line (the log's time of day, on its config's date)."""
    config = json.loads((run_dir / "config.json").read_text())
    day = datetime.fromisoformat(config["started_at"]).date().isoformat()
    first = (run_dir / "servers.log").read_text().split(maxsplit=1)[0]
    return datetime.fromisoformat(f"{day}T{first}").timestamp()


@needs_root
def test_two_paced_runs_at_once_keep_their_pace_and_one_transport(tmp_path):
    # Prepare: the paper regime compressed 100x (0.3 s rounds), 12 s of it, two configurations at once,
    # the second with 30% loss so that the websocket timeout (0.6 s of silence) has something to cut; the
    # servers' paces spread twice the regime's (a server flag that must reach them through the launcher).
    sweep = tmp_path / "sweep"
    env = {**os.environ, "REGIME": "paper", "TIME_SCALE": "100", "DURATION_S": "12", "STALENESS": "9999", "REPEATS": "1",
           "LOSSES": "0% 30%", "STDEVS": "600", "JOBS": "2", "DATASET": "mnist-5k", "SWEEP_DIR": str(sweep),
           "EXTRA_ARGS": "--eval-samples 200 --pace-spread 0.2"}
    # Execute
    run = subprocess.run(["./train_batch.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    # Assert: both ran to the end, side by side (their training overlapped in time), each on its own ports.
    assert run.returncode == 0, run.stdout + run.stderr
    configs = {p.name: json.loads((p / "config.json").read_text()) for p in sweep.iterdir() if p.is_dir()}
    assert set(configs) == {"L0-D600-S9999-speeds_1_1_1_1-r0", "L30-D600-S9999-speeds_1_1_1_1-r0"}
    # Each run lasted from its servers' first log line to its config.json's last write: they overlap.
    windows = [(run_start(sweep / name), (sweep / name / "config.json").stat().st_mtime) for name in configs]
    (start_a, end_a), (start_b, end_b) = windows
    assert start_a < end_b and start_b < end_a
    clean, lossy = configs["L0-D600-S9999-speeds_1_1_1_1-r0"], configs["L30-D600-S9999-speeds_1_1_1_1-r0"]
    assert not set(clean["servers"]) & set(lossy["servers"])
    for c in (clean, lossy):
        assert c["finished"]["stop_reason"] == "duration"
        assert c["regime"]["name"] == "paper" and c["regime"]["time_scale"] == 100
        assert c["regime"]["duration_s"] == 24 and c["args"]["duration_s"] == 12  # DURATION_S overrides
        assert c["args"]["round_timeout_s"] == 0.6 and c["args"]["timeout_on"] == "silence"
        assert c["weights_via"] == ["websocket"] * 4 and c["transport"]["netns"] == [True] * 4
        assert c["transport"]["rto_min_ms"] == [2.0] * 4
        assert set(c["finished"]["cpu"]) >= {"client", "evaluator", "server-0", "server-3"}
        assert c["dataset"]["stdev_samples"] == 40  # D=600 in the paper's units on mnist-5k
    # One split for the sweep; the clean run keeps its pace (within 2x of duration / pace per server).
    assert clean["dataset"]["fingerprint_digest"] == lossy["dataset"]["fingerprint_digest"]
    paces = [info["pace_s"] for info in clean["server_info"]]
    assert sorted(paces) == pytest.approx([0.24, 0.28, 0.32, 0.36], abs=1e-3)
    assert clean["regime"]["pace_spread"] == pytest.approx(0.2) and clean["regime"]["paces_s"] == paces
    for rounds, pace in zip(clean["finished"]["rounds_per_server"], paces):
        assert 12 / pace / 2 <= rounds <= 12 / pace + 1
    events = read_csv(sweep / "L30-D600-S9999-speeds_1_1_1_1-r0" / "events.csv")
    assert any(e["event"] == "round_abandoned" and "websocket timeout" in e["detail"] for e in events)
    assert sum(lossy["finished"]["rounds_per_server"]) < sum(clean["finished"]["rounds_per_server"])
    assert "cpu client" in run.stdout
    # Their own namespaces are gone (a sweep beside the suite may make and remove others meanwhile).
    ours = {info["network"]["netns"] for c in (clean, lossy) for info in c["server_info"]}
    assert len(ours) == 8
    after = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())
    assert not ours & after
