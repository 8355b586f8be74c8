"""The pysyft backend end to end: ./train.sh --backend pysyft on PySyft 0.2.3's own processes (Python 3.7,
.venv-pysyft), with and without loss, and its own Python 3.7 unit tests. Skipped, saying why, only where
setup.sh found no Python 3.7 to install it with."""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from asyncfl.core import data
from asyncfl.core.schema import EVENTS_HEADER, ROUNDS_HEADER
from asyncfl.core.split import make_split
from asyncfl.launch import pysyft
from asyncfl.process import runlog
from asyncfl.settings import LaunchArgs
from tests.helpers import ROOT, read_csv, run_script

needs_pysyft = pytest.mark.skipif(not pysyft.PYTHON.exists(),
                                  reason="no .venv-pysyft: setup.sh found no Python 3.7 to install PySyft 0.2.3 with")
needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("nft") is None,
                                reason="per-server loss in namespaces needs root, iproute2 and nftables")


def train(out_dir, *flags, timeout_s=150):
    return run_script(["./train.sh", "--backend", "pysyft", "--out-dir", str(out_dir), "--base-port", "0", *flags],
                      timeout_s)


def header(path):
    return path.read_text().splitlines()[0].split(",")


@needs_pysyft
def test_its_own_unit_tests_pass_on_python_37():
    r = subprocess.run([str(pysyft.PYTHON), "-m", "unittest", "discover", "-s", "tests", "-t", "."],
                       cwd=ROOT / "pysyft", capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "OK" in r.stderr.splitlines()[-1]


@needs_pysyft
def test_a_run_on_pysyft_writes_the_native_run_folder_from_the_same_split(tmp_path):
    out = tmp_path / "run"
    r = train(out, "--n-servers", "2", "--duration-s", "12", "--eval-interval-s", "3", "--stdev", "100")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "f1=" in r.stdout and "done; plot it with" in r.stdout
    config = json.loads((out / "config.json").read_text())
    versions = config["versions"]
    assert config["backend"] == "pysyft" and versions["syft"] == "0.2.3" and versions["torch"] == "1.4.0"
    assert versions["python"].startswith("3.7.")
    assert versions["asyncfl_git"] == runlog.git_commit() is not None  # the launcher's commit, as the native run records it
    finished = config["finished"]
    assert finished["stop_reason"] == "duration" and all(n > 0 for n in finished["rounds_per_server"])
    # The same shards as the native backend's: the split is made by the same code from the same settings.
    args = LaunchArgs(n_servers=2, stdev=100)
    ds = data.load(args.dataset, args.data_dir)
    _, split = make_split(args, ds.train_labels, ds.n_classes, ds.name, ds.source)
    assert config["dataset"]["fingerprint_digest"] == split["fingerprint_digest"]
    assert [info["class_counts"] for info in config["server_info"]] == split["fingerprints"]["class_counts"]
    assert header(out / "rounds.csv") == ROUNDS_HEADER and header(out / "events.csv") == EVENTS_HEADER
    rounds = read_csv(out / "rounds.csv")
    assert len(rounds) == sum(finished["rounds_per_server"])
    f1 = read_csv(out / "f1_time.csv")
    assert [float(row["time_s"]) for row in f1[:4]] == [0.0, 3.0, 6.0, 9.0] and 0 <= float(f1[-1]["f1"]) <= 1
    assert float(f1[-1]["f1"]) > float(f1[0]["f1"])  # it trained
    assert set(config["finished"]["cpu"]) == {"client", "evaluator", "server-0", "server-1"}
    # Every analysis reads it unchanged.
    a = run_script([".venv/bin/python", "-m", "asyncfl.analysis.analyze", str(out)], 120)
    assert a.returncode == 0, a.stderr[-2000:]
    row = read_csv(out / "runs.csv")[0]
    assert (row["wire"], row["faults"]) == ("pysyft", "pysyft") and float(row["rounds_min"]) > 0


@needs_pysyft
@needs_root
def test_a_lossy_paper_regime_run_drops_packets_in_its_namespaces_and_leaves_none_behind(tmp_path):
    out = tmp_path / "run"
    r = train(out, "--n-servers", "2", "--regime", "paper", "--time-scale", "10", "--duration-s", "15", "--loss", "20%",
              "--staleness-threshold", "0")
    assert r.returncode == 0, r.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["finished"]["stop_reason"] == "duration"
    dropped = config["finished"]["dropped_packets"]
    assert all(d["to_server"] + d["to_client"] > 0 for d in dropped), dropped
    assert config["tcp"]["server_cc"] == ["cubic", "cubic"]
    assert {info["network"]["mechanism"]["loss"] for info in config["server_info"]} == {"nftables netdev ingress (both ends)"}
    assert config["regime"]["round_timeout_s"] == 6.0 and config["server_info"][0]["network"]["rto_min_ms"] == 20.0
    names = {info["network"]["netns"] for info in config["server_info"]}
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(name in left for name in names)
    assert header(out / "events.csv") == EVENTS_HEADER


def test_what_the_study_could_not_run_is_refused_in_one_line(tmp_path):
    r = train(tmp_path / "run", "--aggregation", "fedavg", timeout_s=60)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "--backend pysyft" in r.stderr and "Traceback" not in r.stderr


def test_the_test_subset_is_the_native_scorers(tmp_path):
    from asyncfl.core.task import Scorer, eval_set

    ds = data.load("mnist-5k")
    images, labels = eval_set(ds, 500)
    assert np.array_equal(labels, Scorer(ds, 500).y) and images.dtype == np.uint8 and len(images) == len(labels)
