"""Grids as files (grids/*.env): each one train_batch.sh reads as it reads its variables, the environment
winning over the file; a sweep records its grid file and commit, and collect carries that into results/."""

import json
import os
import subprocess

import pytest

from tests.helpers import ROOT

GRIDS = sorted((ROOT / "grids").glob("*.env"))


def batch(*args, env=None, timeout_s=120):
    return subprocess.run(["./train_batch.sh", *map(str, args)], cwd=ROOT, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout_s)


@pytest.mark.parametrize("grid", GRIDS, ids=[g.stem for g in GRIDS])
def test_every_grid_file_is_a_valid_grid(grid):
    result = batch(grid, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "runs of" in result.stdout.splitlines()[0]


def test_a_grid_file_gives_its_runs_and_the_environment_wins():
    runs = batch(ROOT / "grids/rules-real-net.env", "--dry-run").stdout.splitlines()[0]
    assert runs.startswith("train_batch.sh: 84 runs of 70 s each")  # docs/rules.md's count
    paper = batch("grids/paper.env", "--dry-run").stdout.splitlines()[0]
    assert "108 runs of 240 s each, paper regime K=10" in paper
    fewer = batch("grids/paper.env", "--dry-run", env={"STALENESS": "0 9999", "LOSSES": "20%"}).stdout.splitlines()[0]
    assert "18 runs of 240 s" in fewer


def test_a_bad_grid_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.env"
    bad.write_text("# a comment\nLOSSES='0%'\nFOO=1\n")
    result = batch(bad, "--dry-run")
    assert result.returncode == 2 and result.stderr.strip() == (
        f"train_batch.sh: {bad}, line 3: not a NAME=value line of one of train_batch.sh's variables: FOO=1")
    assert batch(tmp_path / "nosuch.env").returncode == 2


def test_a_sweep_records_its_grid_and_collect_carries_it(tmp_path):
    grid = tmp_path / "tiny.env"
    grid.write_text("LOSSES=0%\nSTDEVS=0\nSTALENESS=0\nREPEATS=1\nDURATION_S=2\nTRANSPORT=loopback\nN_SERVERS=2\nSPEED_SETS=\"1 1\"\n"
                    "EXTRA_ARGS=--no-plot\n")
    sweep = tmp_path / "sweep"
    result = batch(grid, env={"SWEEP_DIR": str(sweep)}, timeout_s=180)
    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads((sweep / "sweep.json").read_text())
    assert record["grid_file"] == str(grid) and record["grid_text"] == grid.read_text()
    assert record["variables"]["duration_s"] == "2" and len(record["commit"]) == 40
    done = subprocess.run([str(ROOT / ".venv/bin/python"), "-m", "asyncfl.analysis.collect", str(sweep), str(tmp_path / "res"),
                           "--no-figures"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "res" / "sweeps" / "sweep.json").read_text()) == record
