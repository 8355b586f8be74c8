"""End to end: train.sh and split_dataset.py as a user runs them, in small settings."""

import json
import os
import signal
import subprocess

from asyncfl.process.runlog import ran_its_course
from tests.helpers import ROOT, kill_session, read_csv, run_script

RUN_FILES = ["config.json", "rounds.csv", "f1_time.csv", "f1_epoch.csv", "yappi.csv", "client.log",
             "servers.log", "model.safetensors"]


def train(out_dir, *flags, timeout_s=180):
    return run_script(["./train.sh", "--base-port", "0", "--out-dir", str(out_dir), *flags], timeout_s)


def test_synchronous_run_writes_every_file_and_keeps_rounds_in_step(tmp_path):
    # Execute
    run = train(tmp_path, "--n-servers", "2", "--staleness-threshold", "0", "--duration-s", "10",
                "--eval-interval-s", "1")
    # Assert
    assert run.returncode == 0, run.stdout + run.stderr
    assert all((tmp_path / f).exists() for f in RUN_FILES)
    assert "f1=" in run.stdout
    rounds = read_csv(tmp_path / "rounds.csv")
    assert list(rounds[0]) == ["time_s", "server", "round", "staleness", "updates_behind", "loss", "round_s", "compute_s",
                               "idle_s", "retrans_segs", "rtos", "max_backoff", "rto_ms", "srtt_ms", "stall_s", "start_s",
                               "applied_s"]
    assert len(rounds) > 50
    assert max(int(r["staleness"]) for r in rounds) <= 1  # S=0: never more than one round apart
    f1_time = read_csv(tmp_path / "f1_time.csv")
    times = [float(r["time_s"]) for r in f1_time]
    assert times[:10] == [float(t) for t in range(10)] and len(times) == 11  # every second, then the final model
    assert 10 <= times[-1] < 11
    assert float(f1_time[-1]["f1"]) > 0.8
    epochs = [int(r["epoch"]) for r in read_csv(tmp_path / "f1_epoch.csv")]
    # the newest advance whenever the evaluator is free (time-wise snapshots go first, so it may not be round 1)
    assert len(epochs) > 3 and epochs == sorted(set(epochs)) and epochs[0] >= 1
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["finished"]["evaluations_skipped_behind"] == 0
    assert config["args"]["staleness_threshold"] == 0 and config["n_servers"] == 2
    assert config["dataset"]["dataset"] == "mnist-5k" and config["finished"]["errors"] == []
    assert config["weights_via"] == ["shared memory"] * 2  # servers on loopback without emulated conditions
    assert config["finished"]["rounds_per_server"] == [max(int(r["round"]) for r in rounds if r["server"] == s)
                                                      for s in ("0", "1")]
    yappi = read_csv(tmp_path / "yappi.csv")
    assert [r["thread"] for r in yappi] == ["server-0", "server-1"]
    assert all(float(r["fit_total_s"]) > 0 and int(r["max_staleness"]) <= 1 for r in yappi)


def test_a_run_whose_model_diverges_stops_there_and_says_so(tmp_path):
    # Execute: a server learning rate past float32's range makes the first update of the global model inf.
    run = train(tmp_path, "--n-servers", "2", "--aggregation", "fedbuff", "--buffer-size", "1", "--server-lr", "1e39",
                "--staleness-threshold", "9999", "--duration-s", "60", "--eval-interval-s", "1", "--no-profile")
    # Assert: it ends at once, as a diverged run (exit 0: it ran its course), and the sweep would not rerun it.
    assert run.returncode == 0, run.stdout + run.stderr
    finished = json.loads((tmp_path / "config.json").read_text())["finished"]
    assert finished["stop_reason"] == "diverged" and finished["training_s"] < 30
    assert all(e.endswith("has non-finite values") for e in finished["errors"]) and finished["errors"]
    assert [e["event"] for e in read_csv(tmp_path / "events.csv")].count("diverged") == 1
    assert ran_its_course(tmp_path)


def test_semi_synchronous_gap_and_slow_server(tmp_path):
    # S=6 with one server four times slower: the gate holds the gap at 7, and without the gate the
    # slow server completes about a quarter of the others' rounds.
    gated = train(tmp_path / "s6", "--n-servers", "2", "--staleness-threshold", "6", "--speeds", "1 4",
                  "--duration-s", "8", "--eval-interval-s", "4", "--no-profile")
    free = train(tmp_path / "async", "--n-servers", "2", "--staleness-threshold", "9999", "--speeds", "1 4",
                 "--duration-s", "12", "--eval-interval-s", "4", "--no-profile", "--no-shared-memory")
    assert gated.returncode == 0 and free.returncode == 0, gated.stderr + free.stderr
    gated_rows = read_csv(tmp_path / "s6" / "rounds.csv")
    assert max(int(r["staleness"]) for r in gated_rows) == 7
    assert not (tmp_path / "s6" / "yappi.csv").exists()
    free_config = json.loads((tmp_path / "async" / "config.json").read_text())
    assert free_config["weights_via"] == ["websocket"] * 2  # --no-shared-memory: in the frames
    # The mechanism: the slow server idles three times its compute time every round ...
    slow = [r for r in read_csv(tmp_path / "async" / "rounds.csv") if r["server"] == "1"]
    factors = sorted(float(r["idle_s"]) / float(r["compute_s"]) for r in slow if float(r["compute_s"]) > 0)
    assert 2.7 <= factors[len(factors) // 2] <= 3.6
    # ... and so completes about a quarter of the other's rounds (fewer on a busy machine, where it computes
    # while the other does and the other computes while it idles: 0.147 beside a paced sweep).
    rounds = free_config["finished"]["rounds_per_server"]
    assert 0.1 <= rounds[1] / rounds[0] <= 0.45


def test_bad_settings_stop_before_starting_anything(tmp_path):
    bad_loss = train(tmp_path / "loss", "--loss", "ten", timeout_s=30)
    assert bad_loss.returncode == 2 and "percentage" in bad_loss.stderr
    assert not (tmp_path / "loss").exists()
    bad_speeds = train(tmp_path / "speeds", "--n-servers", "2", "--speeds", "1 2 3", timeout_s=60)
    assert bad_speeds.returncode != 0 and "--speeds '1 2 3' has 3 values for 2 servers" in bad_speeds.stderr
    assert not (tmp_path / "speeds" / "rounds.csv").exists()
    for flags, says in ((["--speeds", "halfnormal:fast"], "halfnormal:SD takes a number"),
                        (["--regime", "paper", "--compute-s", "0.5"], "--compute-s: the paper regime sets")):
        bad = train(tmp_path / "bad", *flags, timeout_s=30)
        assert bad.returncode == 2 and says in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
        assert not (tmp_path / "bad").exists()


def test_split_dataset_prints_the_table():
    run = run_script([".venv/bin/python", "split_dataset.py", "--n-servers", "4", "--stdev", "600",
                      "--dataset", "mnist-5k"], 60)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[1].split()[0] == "server" and len(lines) >= 7
    totals = lines[6].split()
    assert totals[0] == "total" and totals[-1] == "4000"
    assert sum(int(line.split()[-1]) for line in lines[2:6]) == 4000


def test_batch_grid_with_rules_and_partitions(tmp_path):
    # Prepare: train_batch.sh's lists from the environment, one entry per line, as a user would set them.
    env = {**os.environ, "SWEEP_DIR": str(tmp_path / "sweep"), "LOSSES": "0%", "STDEVS": "0 10000",
           "STALENESS": "0 9999", "REPEATS": "1", "SPEED_SETS": "halfnormal:1",
           "RULES": "ssp\nfedavg\nfedbuff --buffer-size 4\nfedasync --staleness-threshold 9999 --alpha 0.6",
           "PARTITIONS": "gaussian\nshards --shards-per-server 2"}
    # Execute
    run = subprocess.run(["./train_batch.sh", "--dry-run"], capture_output=True, text=True, timeout=30, env=env, cwd=ROOT)
    # Assert: ssp and fedbuff per S, fedavg once (its S is 0), fedasync once at the S its entry pins; the
    # shards split only with the first D.
    assert run.returncode == 0, run.stderr
    names = [line.split("] ", 1)[1] for line in run.stdout.splitlines() if line.startswith("[")]
    assert len(names) == 3 * 6
    assert "fedavg-L0-D0-S0-speeds_halfnormal-1-r0" in names
    assert "fedbuff_buffer-size-4-L0-D10000-S9999-speeds_halfnormal-1-r0" in names
    assert [n for n in names if n.startswith("fedasync") and "D0" in n and "shards" not in n] == [
        "fedasync_alpha-0.6-L0-D0-S9999-speeds_halfnormal-1-r0"]
    assert "shards_shards-per-server-2-L0-D0-S0-speeds_halfnormal-1-r0" in names
    assert not any(n.startswith("shards") and "D10000" in n for n in names)
    unset = {k: v for k, v in env.items() if k not in ("RULES", "PARTITIONS", "SPEED_SETS")}
    default = subprocess.run(["./train_batch.sh", "--dry-run"], capture_output=True, text=True, timeout=30, env=unset,
                             cwd=ROOT)
    assert "[4/4] L0-D10000-S9999-speeds_1_1_1_1-r0" in default.stdout  # the lists' defaults
    # A run collected into a results folder (DONE_IN) is not run again: a sweep resumes from committed results.
    collected = tmp_path / "results" / "runs" / "L0-D0-S9999-speeds_1_1_1_1-r0"
    collected.mkdir(parents=True)
    (collected / "config.json").write_text(json.dumps({"finished": {"stop_reason": "duration"}}))
    resumed = subprocess.run(["./train_batch.sh", "--dry-run"], capture_output=True, text=True, timeout=30, cwd=ROOT,
                             env={**unset, "DONE_IN": str(tmp_path / "results")})
    assert "[2/4] L0-D0-S9999-speeds_1_1_1_1-r0\n  done already\n[3/4]" in resumed.stdout, resumed.stdout
    assert resumed.stdout.count("done already") == 1


def test_halfnormal_speeds_are_drawn_once_per_server_from_the_seed():
    from asyncfl.settings import parse_speeds
    a, b = parse_speeds("halfnormal:1", 8, seed=0), parse_speeds("halfnormal:1", 8, seed=1)
    assert a == parse_speeds("halfnormal:1", 8, seed=0) and a != b and len(a) == 8
    assert all(r >= 1 for r in a + b) and max(a) > 1.5  # 1 + |N(0, 1)|: most above 1, some well above
    assert parse_speeds("halfnormal:0", 3) == [1.0, 1.0, 1.0]


def test_an_unwritable_run_folder_stops_with_a_message_not_a_traceback(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    run = run_script(["./train.sh", "--duration-s", "1", "--out-dir", str(blocker / "run")], 60)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "--out-dir" in run.stderr and "Traceback" not in run.stderr + run.stdout


def test_a_local_sweep_cut_after_its_first_run_resumes_with_the_second(tmp_path):
    # Prepare: a two-run grid on loopback (no root needed), one run at a time.
    sweep = tmp_path / "sweep"
    env = {**os.environ, "TRANSPORT": "loopback", "LOSSES": "0%", "STDEVS": "0", "STALENESS": "0 9999", "REPEATS": "1",
           "DURATION_S": "3", "EVAL_INTERVAL_S": "1", "SWEEP_DIR": str(sweep), "EXTRA_ARGS": "--eval-samples 200"}
    names = ["L0-D0-S0-speeds_1_1_1_1-r0", "L0-D0-S9999-speeds_1_1_1_1-r0"]
    proc = subprocess.Popen(["./train_batch.sh"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        # Execute: cut the sweep (Ctrl-C to its process group) once the first run is done, the second running
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith(f"  {names[0]}: final f1"):
                os.killpg(proc.pid, signal.SIGINT)
                break
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            kill_session(proc)
    # Assert: the first run finished and was summarised; the cut says how to resume, with exit 130
    out = "".join(seen) + rest
    assert proc.returncode == 130, out
    assert f"  {names[0]}: final f1" in out and "interrupted; run again with SWEEP_DIR=" in out
    # Execute: the same command again
    again = subprocess.run(["./train_batch.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    # Assert: the first is skipped, the second runs to its end
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"[1/2] {names[0]}\n  done already" in again.stdout and f"  {names[1]}: final f1" in again.stdout, again.stdout
    configs = [json.loads((sweep / n / "config.json").read_text()) for n in names]
    assert [c["finished"]["stop_reason"] for c in configs] == ["duration", "duration"]
