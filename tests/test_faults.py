"""Faults and interruptions in real runs of train.sh: a server killed and restarted, the evaluator killed,
Ctrl-C and SIGTERM."""

import json
import os
import re
import signal
import subprocess
import time

import pytest

from tests.helpers import ROOT, kill_session, read_csv, wait_for_rows, wait_session_gone


def start_train(out_dir, *flags):
    return subprocess.Popen(["./train.sh", "--base-port", "0", "--out-dir", str(out_dir), *flags], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def assert_whole_rows(out_dir):
    for name in ("rounds.csv", "events.csv", "f1_time.csv", "f1_epoch.csv", "yappi.csv"):
        text = (out_dir / name).read_text()
        assert text.endswith("\n"), name
        rows = read_csv(out_dir / name)
        assert all(None not in r.values() and None not in r for r in rows), name


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_an_interrupted_run_stops_within_5_s_and_keeps_its_results(tmp_path, how):
    # Prepare: a run that scores every round, so the evaluator has a backlog to skip when interrupted.
    proc = start_train(tmp_path, "--n-servers", "2", "--duration-s", "120", "--eval-interval-s", "0.5",
                       "--eval-every-rounds", "1")
    try:
        wait_for_rows(tmp_path / "rounds.csv", 100, proc, timeout_s=90)
        # Execute: Ctrl-C as a terminal sends it (to the whole process group), or SIGTERM to train.sh alone.
        t0 = time.monotonic()
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        left = wait_session_gone(proc.pid, timeout_s=5.0)
        stop_s = time.monotonic() - t0
        # Assert
        assert left == [] and stop_s < 5.0, (left, stop_s)
        assert proc.returncode == 130
        config = json.loads((tmp_path / "config.json").read_text())
        assert config["finished"]["stop_reason"] == "interrupted"
        assert_whole_rows(tmp_path)
        assert [r["thread"] for r in read_csv(tmp_path / "yappi.csv")] == ["server-0", "server-1"]
        final_time = float(read_csv(tmp_path / "f1_time.csv")[-1]["time_s"])
        assert final_time == pytest.approx(config["finished"]["training_s"], abs=0.01)  # the final model scored
    finally:
        kill_session(proc)


def test_a_hung_then_killed_server_is_left_out_restarted_and_rejoins(tmp_path):
    # Prepare: S=0, so without --server-timeout-s the others would wait for the silent server.
    proc = start_train(tmp_path, "--n-servers", "3", "--staleness-threshold", "0", "--server-timeout-s", "1",
                       "--duration-s", "30", "--eval-interval-s", "5")
    try:
        wait_for_rows(tmp_path / "rounds.csv", 60, proc, timeout_s=90)
        pid = json.loads((tmp_path / "config.json").read_text())["server_info"][1]["pid"]
        # Execute: server 1 hangs (its round goes unanswered) until it is left out, then dies. A server that
        # only died would be back within the timeout: server/main.py restarts it in a fraction of a second.
        os.kill(pid, signal.SIGSTOP)
        wait_for_rows(tmp_path / "events.csv", 1, proc, timeout_s=30)
        os.kill(pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=120)
        # Assert: left out, restarted by server/main.py, the round in flight abandoned, reconnected, rejoined.
        assert proc.returncode == 0, out
        assert "server-1 exited with code -9; restarting it on port" in (tmp_path / "servers.log").read_text()
        events = read_csv(tmp_path / "events.csv")
        kinds = [e["event"] for e in events if e["server"] == "1"]
        assert kinds[:3] == ["left_out", "round_abandoned", "reconnected"] and "rejoined" in kinds, kinds
        t_out = next(float(e["time_s"]) for e in events if e["event"] == "left_out")
        t_back = next(float(e["time_s"]) for e in events if e["event"] == "rejoined")
        rows = read_csv(tmp_path / "rounds.csv")
        meanwhile = [r for r in rows if t_out < float(r["time_s"]) < t_back]
        assert {r["server"] for r in meanwhile} == {"0", "2"} and len(meanwhile) >= 5  # the others went on
        assert any(r["server"] == "1" and float(r["time_s"]) > t_back for r in rows)  # and so does server 1
        assert max(int(r["staleness"]) for r in rows) <= 1  # still synchronous among those present
        finished = json.loads((tmp_path / "config.json").read_text())["finished"]
        assert finished["retries_per_server"][1] >= 1 and finished["skipped_rounds_per_server"][1] > 0
        assert finished["stop_reason"] == "duration" and finished["left_out_at_end"] == []
        assert_whole_rows(tmp_path)
    finally:
        kill_session(proc)


def test_an_evaluator_crash_is_reported_and_does_not_hang_the_run(tmp_path):
    proc = start_train(tmp_path, "--n-servers", "2", "--duration-s", "12", "--eval-interval-s", "1")
    try:
        wait_for_rows(tmp_path / "f1_time.csv", 2, proc, timeout_s=90)
        pid = int(re.search(r"evaluator ready \(pid (\d+)\)", (tmp_path / "client.log").read_text()).group(1))
        os.kill(pid, signal.SIGKILL)
        t_kill = time.monotonic()
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 1, out
        assert time.monotonic() - t_kill < 20  # the remaining seconds of training, not a hang
        assert wait_session_gone(proc.pid) == []
        finished = json.loads((tmp_path / "config.json").read_text())["finished"]
        assert finished["stop_reason"] == "duration"
        assert any("evaluator" in e for e in finished["errors"])
        assert any(e["event"] == "evaluator_died" for e in read_csv(tmp_path / "events.csv"))
        assert (tmp_path / "model.safetensors").exists()
        assert float(read_csv(tmp_path / "rounds.csv")[-1]["time_s"]) > 11  # training went on to the end
    finally:
        kill_session(proc)
