"""The virtual clock (core/virtualclock.py) and the twin of a real run (analysis/twin.py)."""

import json
import subprocess
import sys
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from asyncfl.core import virtualclock
from asyncfl.core.rules.ssp import SSPRule
from asyncfl.core.state import TrainingState
from asyncfl.core.virtualclock import Timing
from tests.helpers import ROOT, run_script


def clock_run(staleness, timings, duration_s, evals=()):
    """Two servers whose results add their number + 1 to every weight; returns (updates, evaluations)."""
    state = TrainingState({"w": torch.zeros(1)}, 2, staleness, SSPRule(2))
    updates, scores = [], []
    virtualclock.run(state, lambda i, w: SimpleNamespace(weights={"w": w["w"] + 2 * (i + 1)}, n_samples=1, loss=0.0),
                     lambda i, r: timings(i, r), duration_s, list(evals),
                     lambda t, w: scores.append((t, float(w["w"]))), updates.append)
    return updates, scores


def test_the_gate_holds_a_fast_server_back_on_the_virtual_clock():
    # Server 0's rounds take 1 s, server 1's 3 s. S=0: server 0 waits for server 1 after every round.
    updates, _ = clock_run(0, lambda i, r: Timing(1.0 if i == 0 else 3.0), 10.0)
    assert [(u.time_s, u.server, u.round) for u in updates] == [
        (1.0, 0, 1), (3.0, 1, 1), (4.0, 0, 2), (6.0, 1, 2), (7.0, 0, 3), (9.0, 1, 3), (10.0, 0, 4)]
    assert [u.start_s for u in updates[:3]] == [0.0, 0.0, 3.0]  # released when server 1's round 1 came in
    free, _ = clock_run(9999, lambda i, r: Timing(1.0 if i == 0 else 3.0), 10.0)
    assert [u.server for u in free].count(0) == 10 and [u.server for u in free].count(1) == 3


def test_gaps_stopped_servers_and_evaluations_before_events_at_the_same_instant():
    # Server 1 has two rounds only; server 0's snapshots come 0.5 s after the gate lets it go.
    updates, scores = clock_run(9999, lambda i, r: Timing(1.0, 0.5) if i == 0 else (Timing(2.0) if r <= 2 else None),
                                5.0, evals=[0.0, 2.0, 4.0])
    assert [(u.time_s, u.server) for u in updates] == [(1.5, 0), (2.0, 1), (3.0, 0), (4.0, 1), (4.5, 0)]
    # SSP adds (new - old) / 2: server 0 adds 1, server 1 adds 2. At t=2 server 1's first update is not in yet.
    assert scores == [(0.0, 0.0), (2.0, 1.0), (4.0, 4.0), (5.0, 7.0)]
    # Server 0's second snapshot (t=2.0) and server 1's update (t=2.0) tie: the update goes first.
    assert updates[2].start_s == 2.0 and updates[2].updates_behind == 0
    assert updates[4].updates_behind == 1  # snapshot at 3.5, server 1's second update at 4.0


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """A short real run: 4 servers of unequal speed at S=1, so the gate acts."""
    out = tmp_path_factory.mktemp("twin") / "run"
    run = run_script(["./train.sh", "--base-port", "0", "--out-dir", str(out), "--n-servers", "4", "--staleness-threshold",
                      "1", "--speeds", "1 1 2 3", "--compute-s", "0.03", "--duration-s", "5", "--eval-interval-s", "1",
                      "--no-profile"], 180)
    assert run.returncode == 0, run.stdout + run.stderr
    return out


def twin(run, *flags):
    return subprocess.run([sys.executable, "-m", "asyncfl.analysis.twin", str(run), *flags], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)


def test_the_replay_twin_puts_a_real_run_s_updates_in_its_order_and_ends_with_its_model(real_run):
    made = twin(real_run, "--mode", "replay")
    assert made.returncode == 0, made.stderr
    real = pd.read_csv(real_run / "rounds.csv").sort_values("applied_s")
    replay = pd.read_csv(real_run / "twin-replay" / "rounds.csv")
    assert len(real) > 40 and max(real["staleness"]) == 2  # the gate held servers back
    assert list(zip(replay["server"], replay["round"])) == list(zip(real["server"], real["round"]))
    assert (replay["time_s"] - real["applied_s"].to_numpy()).abs().max() < 1e-5
    assert list(replay["updates_behind"]) == list(real["updates_behind"])
    ours, theirs = load_file(real_run / "twin-replay" / "model.safetensors"), load_file(real_run / "model.safetensors")
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)  # bit for bit: the same updates, in the same order
    f1_real = pd.read_csv(real_run / "f1_time.csv")
    f1_twin = pd.read_csv(real_run / "twin-replay" / "f1_time.csv")
    assert f1_twin["f1"].iloc[-1] == f1_real["f1"].iloc[-1]


def test_the_formula_twin_models_speed_and_links_and_bad_folders_exit_2(real_run, tmp_path):
    real = pd.read_csv(real_run / "rounds.csv")  # --compute-s 0.03 with ratio 3: rounds of at least 90 ms
    assert ((real["compute_s"] + real["idle_s"])[real["server"] == 3] >= 0.09 - 1e-6).all()
    made = twin(real_run, "--mode", "formula")
    assert made.returncode == 0, made.stderr
    record = json.loads((real_run / "twin-formula" / "config.json").read_text())
    round_s = record["model"]["round_s"]
    # ratio x compute + the same transfer on every unlimited link: the compute parts go 1 : 2 : 3
    assert round_s[0] == round_s[1] and (round_s[3] - round_s[0]) / (round_s[2] - round_s[0]) == pytest.approx(2)
    transfer = 2 * record["weights_bytes"] / (10000e6 / 8)
    assert round_s[0] == pytest.approx(transfer + max(0.03, record["model"]["compute_s_measured"]))
    rounds = pd.read_csv(real_run / "twin-formula" / "rounds.csv")
    per_server = rounds.groupby("server")["round"].max()
    assert per_server[0] > per_server[3] and rounds["time_s"].max() <= 5.0
    assert list(pd.read_csv(real_run / "twin-formula" / "f1_time.csv")["time_s"]) == [0, 1, 2, 3, 4, 5]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text((real_run / "config.json").read_text())
    pd.read_csv(real_run / "rounds.csv").drop(columns=["start_s", "applied_s"]).to_csv(tmp_path / "old" / "rounds.csv")
    old = twin(tmp_path / "old", "--mode", "replay")
    assert old.returncode == 2 and "no start_s/applied_s" in old.stderr and "Traceback" not in old.stderr
    assert twin(tmp_path / "absent").returncode == 2


def fake_run(root, name, rule, staleness, seed, f1_times, formula_times=None, duration=20.0, loss=0.0):
    """A run folder with what analysis/realnet.py reads: F1 reaches 0.8 and 0.9 at the given times (None: never)."""
    run = root / "runs" / name
    run.mkdir(parents=True)
    config = {"args": {"duration_s": duration, "seed": seed, "dataset": "mnist-5k"}, "n_servers": 2,
              "dataset": {"partition": "gaussian"}, "aggregation": {"aggregation": rule}, "staleness_threshold": staleness,
              "server_info": [{"speed_ratio": 1.0, "network": {"loss_pct": loss}}] * 2,
              "finished": {"retries_per_server": [0, 0], "starved": []}}
    (run / "config.json").write_text(json.dumps(config))

    def curve(folder, times):
        folder.mkdir(exist_ok=True)
        rows = ["time_s,f1", "0,0.1"] + [f"{t},{f}" for t, f in zip(times, (0.8, 0.9)) if t is not None]
        (folder / "f1_time.csv").write_text("\n".join(rows) + f"\n{duration},0.5\n")
    curve(run, f1_times)
    if formula_times:
        curve(run / "twin-formula", formula_times)
    (run / "rounds.csv").write_text("time_s,server,round,retrans_segs\n1,0,1,2\n5,1,1,3\n15,0,2,0\n")


def test_speed_ups_over_fedavg_are_paired_by_seed_and_bounded_where_a_run_never_got_there(tmp_path, capsys):
    from asyncfl.analysis import realnet
    for seed in (0, 1):
        fake_run(tmp_path, f"fedavg-{seed}", "fedavg", 0, seed, (8.0, None), (10.0, 16.0))
        fake_run(tmp_path, f"ssp-{seed}", "ssp", 9999, seed, (4.0 if seed == 0 else 2.0, 10.0), (5.0, 8.0))
        fake_run(tmp_path, f"lossy-fedavg-{seed}", "fedavg", 0, seed, (None, None), loss=20.0)
        fake_run(tmp_path, f"lossy-ssp-{seed}", "ssp", 9999, seed, (5.0, None), loss=20.0)
    for rule, record, times in (("fedasync", {"alpha": 0.6, "staleness_fn": "polynomial", "staleness_a": 0.5, "staleness_b": 4}, (6.0, 12.0)),
                                ("fedbuff", {"buffer_size": 2, "server_lr": 1.0}, (3.0, 4.0))):
        fake_run(tmp_path, f"{rule}-0", rule, 9999, 0, times, (4.0, 8.0))
        path = tmp_path / "runs" / f"{rule}-0" / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "aggregation": {"aggregation": rule, **record}}))
    # The formula twins of ssp made 6 and 3 results in the run's 20 s (and one after it); the real runs 3 each.
    for seed, times in ((0, (1, 2, 3, 4, 5, 6, 25)), (1, (1, 2, 3, 25))):
        rows = "".join(f"{t},0,{k + 1},0\n" for k, t in enumerate(times))
        (tmp_path / "runs" / f"ssp-{seed}" / "twin-formula" / "rounds.csv").write_text("time_s,server,round,staleness\n" + rows)
    diverged = tmp_path / "runs" / "lossy-ssp-1" / "config.json"  # its model diverged at 12 s (recorded as error)
    config = json.loads(diverged.read_text())
    config["finished"].update(stop_reason="error", training_s=12.0, errors=["server-1: tensor 'fc1.weight' has non-finite values"])
    diverged.write_text(json.dumps(config))
    assert realnet.main(realnet.Args(tmp_path, figures=False)) == 0
    table = (tmp_path / "realnet.md").read_text()
    ssp = next(line for line in table.splitlines() if line.startswith("| ssp S=inf"))
    cells = [c.strip() for c in ssp.split("|")[2:-1]]
    # speeds only, F1 0.8: 8/4 and 8/2 -> median 3; the formula twin 10/5 = 2
    assert cells[0] == "3.00x (2.00-4.00) (2.00x (2.00-2.00))"
    assert cells[1].startswith(">2.00x")  # FedAvg never reached 0.9 in 20 s: 20/10 is a lower bound
    assert cells[2].startswith(">4.00x") and cells[3].startswith("neither reached")  # lossy links
    assert cells[2].endswith("(-)")  # their formula twins were not made: missing, not "never got there"
    runs = pd.read_csv(tmp_path / "realnet_runs.csv")
    row = runs[runs["run"] == "ssp-0"].iloc[0]
    assert (row["updates_to_80"], row["retrans_to_80"], row["updates_to_90"], row["retrans_to_90"]) == (1, 2, 2, 5)
    assert row["link"] == "speeds" and runs[runs["run"] == "lossy-ssp-0"]["link"].iloc[0].startswith("speeds + loss 20 20")
    errors = next(line for line in table.split("## The formula twin's error")[1].splitlines()
                  if "| speeds only | ssp S=inf |" in line)
    assert "| +88% (2 of 2 runs) | -20% (2 of 2 runs) | 1.50 (1.00-2.00) |" in errors  # 5 s vs 4 s and 2 s: +25%, +150%; 8 s vs 10 s
    # FedBuff against FedAsync, paired by seed: 6/3 and 12/4; their formula twins alike (4/4, 8/8)
    assert "| gaussian | speeds only | fedbuff(K=2,lr=1) | 2.00x (2.00-2.00) (1.00x (1.00-1.00)) | 3.00x (3.00-3.00) " \
        "(1.00x (1.00-1.00)) |" in table.split("## FedBuff against FedAsync")[1]
    cost = next(line for line in table.splitlines() if line.startswith("| gaussian | speeds only | ssp S=inf |"))
    one = row["mb_to_80"]  # one update: the model each way
    assert cost == f"| gaussian | speeds only | ssp S=inf | 1, {one:.0f}, 2 | 2, {2 * one:.0f}, 5 | 2 of 2 | - |"
    lossy_fedavg = next(line for line in table.splitlines() if line.startswith("| gaussian | speeds + loss + rate | fedavg |"))
    assert lossy_fedavg.endswith("| 0 of 2 | - |")  # never reached 0.9: its cost counts to the run's end
    lossy_ssp = next(line for line in table.splitlines() if line.startswith("| gaussian | speeds + loss + rate | ssp S=inf |"))
    assert lossy_ssp.endswith("| 0 of 2 | at 12 s |")
    owners = table.split("## What the links did to each owner")[1].splitlines()
    # owner 0: updates at 1 s and 15 s of 20 (retransmissions 2, 0); owner 1: one at 5 s (3)
    assert owners[4] == "| (loss %, rate Mbit/s) | 20, - | 20, - |"
    assert owners[5] == "| fedavg | 2 rounds, longest gap 14.0 s, 1.0 retr./round | 1 rounds, longest gap 15.0 s, 3.0 retr./round |"
    assert realnet.main(realnet.Args(tmp_path / "nothing")) == 2
