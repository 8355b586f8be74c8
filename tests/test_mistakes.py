"""A user's mistakes with train.sh and train_batch.sh, as a user makes them: each is one line naming the
flag or variable and the value, exit 2, before anything starts; and what a user reads (--help, the line
naming run.png, the live status line) says what it should."""

import json
import os
import re
import socket
import subprocess

import pytest

from asyncfl.client.live import status_text
from tests.helpers import ROOT, run_script


def one_line_exit_2(result: subprocess.CompletedProcess, *fragments: str) -> str:
    err = result.stderr.strip()
    assert result.returncode == 2, (result.returncode, result.stdout, err)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def sweep(tmp_path, env: dict, *args: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "SWEEP_DIR": str(tmp_path / "sweep"), "DURATION_S": "2", "REPEATS": "1", "STDEVS": "0",
            "LOSSES": "0%", "TRANSPORT": "loopback", **env}
    return subprocess.run(["./train_batch.sh", *args], cwd=ROOT, env=full, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("env, fragments", [
    ({"STALENESS": "x"}, ("STALENESS", "'x'")),
    ({"DURATION_S": "x"}, ("DURATION_S", "'x'")),
    ({"STALENESS": "0 -1"}, ("STALENESS", "'-1'")),
    ({"LOSSES": "abc", "TRANSPORT": "netns"}, ("LOSSES", "abc")),
    ({"STDEVS": "x"}, ("STDEVS", "'x'")),
    ({"DATASET": "nosuch"}, ("DATASET", "nosuch")),
    ({"EXTRA_ARGS": "--nosuch"}, ("EXTRA_ARGS", "--nosuch")),
    ({"EXTRA_ARGS": "--lr -1"}, ("EXTRA_ARGS", "--lr", "-1")),
    ({"SPEED_SETS": "1 x 1 1"}, ("SPEED_SETS", "--speeds", "'1 x 1 1'")),
    ({"REPEATS": "x"}, ("REPEATS", "'x'")),
    ({"TIME_SCALE": "1000"}, ("TIME_SCALE", "1000")),
    ({"N_SERVERS": "100000", "SPEED_SETS": "halfnormal:0"}, ("N_SERVERS", "--n-servers", "100000")),
    ({"SPEED_SETS": ""}, ("SPEED_SETS is empty",)),
])
@pytest.mark.parametrize("dry", [True, False])
def test_a_bad_sweep_variable_stops_the_sweep_before_its_first_run(tmp_path, env, fragments, dry):
    result = sweep(tmp_path, env, *(["--dry-run"] if dry else []))
    one_line_exit_2(result, "train_batch.sh: ", *fragments)
    assert not (tmp_path / "sweep").exists()  # nothing started, nothing left looking like a sweep


def test_train_batch_help_lists_every_variable_with_its_default():
    script = (ROOT / "train_batch.sh").read_text()
    block = script[script.index("\n## The study"):script.index("\nusage()")]  # the block, not the sed line naming it
    names = re.findall(r"^(?:list )?([A-Z_]+)[= ]", block, re.M)
    assert {"LOSSES", "STDEVS", "STALENESS", "JOBS", "REPEATS", "EXTRA_ARGS", "RULES", "DONE_IN"} <= set(names)
    text = subprocess.run(["./train_batch.sh", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout
    for name in names:
        assert re.search(rf"^  {name}=", text, re.M), name
    assert re.search(r"^  STALENESS=0 6 12 9999 +SSP staleness threshold S", text, re.M)
    headings = [line for line in text.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
    assert headings[1].startswith("The study's grid") and headings[-1] == "The rest:"


@pytest.mark.parametrize("flags, fragments", [
    (["--n-servers", "100000"], ("--n-servers", "at most", "100000")),
    (["--speeds", "1 1 x 1"], ("--speeds", "'1 1 x 1'")),
    (["--base-port", "99999"], ("--base-port", "99999")),
])
def test_a_bound_names_its_flag_before_anything_starts(tmp_path, flags, fragments):
    result = run_script(["./train.sh", "--out-dir", str(tmp_path / "run"), *flags], 60)
    assert not result.stderr.count("\n") > 2, result.stderr
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert all(f in result.stderr for f in fragments), result.stderr
    assert not (tmp_path / "run").exists()


def test_an_out_dir_holding_a_run_is_refused_unless_overwrite(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"args": {}}))
    (run / "run.png").write_bytes(b"old")
    result = run_script(["./train.sh", "--base-port", "0", "--out-dir", str(run), "--duration-s", "2"], 60)
    one_line_exit_2(result, str(run), "--overwrite")
    assert (run / "run.png").read_bytes() == b"old" and not (run / "servers.log").exists()
    result = run_script(["./train.sh", "--base-port", "0", "--out-dir", str(run), "--duration-s", "2", "--n-servers", "2",
                         "--eval-interval-s", "1", "--no-live", "--overwrite"], 120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads((run / "config.json").read_text())["finished"]["stop_reason"] == "duration"
    # The new run's own figure, and the line that names it.
    assert (run / "run.png").stat().st_size > 10_000
    assert f"F1 over time and rounds per server: {run / 'run.png'}" in result.stdout


def held_port() -> socket.socket:
    """A listening socket of this test's own on the default port range (8777 + 1), or a skip if it is taken."""
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 8778))
    except OSError:
        pytest.skip("port 8778 is held by something else here")
    holder.listen()
    return holder


def test_a_taken_default_port_means_free_ports_and_a_taken_given_one_is_refused(tmp_path):
    with held_port():
        result = run_script(["./train.sh", "--out-dir", str(tmp_path / "a"), "--duration-s", "2", "--n-servers", "2",
                             "--no-live", "--no-plot"], 120)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "port 8778 on 127.0.0.1 is in use" in result.stdout and "free ports" in result.stdout
        servers = json.loads((tmp_path / "a" / "config.json").read_text())["servers"]
        assert not any(s.endswith(":8778") for s in servers)
        result = run_script(["./train.sh", "--out-dir", str(tmp_path / "b"), "--base-port", "8776", "--n-servers", "4"], 60)
        one_line_exit_2(result, "--base-port 8776", "8778", "in use")
        assert not (tmp_path / "b" / "servers.log").exists()


def test_train_help_is_grouped_and_shows_regime_defaults_as_values():
    text = subprocess.run(["./train.sh", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout
    groups = re.findall(r"─ (\w+) options ─", text)
    assert groups == ["study", "run", "network", "rules", "security", "more"]
    study = text[text.index("─ study options"):text.index("─ run options")]
    assert "--staleness-threshold" in study and "--stdev" in study and "--loss " in study
    assert "(default: None)" not in text and "{None" not in text
    assert "(default: fast 60; paper 240 at K=10)" in " ".join(text.split()).replace("│ ", "")
    rules = text[text.index("─ rules options"):text.index("─ security options")]
    assert rules.index("--aggregation") < rules.index("--buffer-size")  # a rule's own flags follow it


def test_the_status_line_fits_the_terminal():
    many = status_text(80, 30.0, 60.0, 0.5, list(range(256)), 1000)
    assert len(many) <= 80 and "rounds 0..255 over 256 servers" in status_text(120, 30.0, 60.0, 0.5, list(range(256)), 1000)
    few = status_text(200, 30.0, 60.0, 0.5, [3, 4], 7)
    assert "s0 3(+0)  s1 4(+1)" in few and len(few) <= 200
    assert len(status_text(20, 30.0, 60.0, None, [3, 4], 7)) == 20


def test_round_wise_scores_are_placed_when_the_slowest_server_reached_their_round():
    import pandas as pd

    from asyncfl.analysis.plot import epoch_times

    rounds = pd.DataFrame({"time_s": [1, 2, 3, 1.5, 2.5, 4], "server": [0, 0, 0, 1, 1, 1], "round": [1, 2, 3, 1, 2, 3]})
    f1_epoch = pd.DataFrame({"epoch": [1, 2, 3, 4], "f1": [0.1, 0.2, 0.3, 0.4]})
    placed = epoch_times(f1_epoch, rounds)
    assert list(placed["time_s"]) == [1.5, 2.5, 4.0] and list(placed["f1"]) == [0.1, 0.2, 0.3]  # round 4: never reached
    assert epoch_times(None, rounds).empty


def test_a_run_folder_is_named_after_the_s_its_rule_runs_at():
    from asyncfl.launch.main import default_out_dir
    from asyncfl.settings import LaunchArgs

    assert default_out_dir(LaunchArgs(aggregation="fedavg")).name.startswith("fedavg-L0-D0-S0-")  # fedavg's barrier: S=0
    assert default_out_dir(LaunchArgs(staleness_threshold=6)).name.startswith("L0-D0-S6-")
