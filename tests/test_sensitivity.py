"""The sensitivity sweep's plan (launch/sensitivity.py): which runs, in what order, what resumes."""

import json
import subprocess
import sys

from asyncfl.launch import sensitivity
from asyncfl.launch.sensitivity import SensitivityArgs, plan
from tests.helpers import ROOT


def flag(run, name):
    args = list(run.args)
    return args[args.index(name) + 1] if name in args else None


def test_every_variant_changes_one_choice_at_the_deciding_cells():
    runs = plan(SensitivityArgs(dry_run=True))
    by_variant = {}
    for r in runs:
        by_variant.setdefault(r.name.split("/")[0], []).append(r)
    assert {v: len(rs) for v, rs in by_variant.items()} == {
        "d-code": 18, "spread-0": 24, "spread-0.05": 24, "fashion": 24, "fashion-full-test": 3, "k5": 24}
    for variant, rs in by_variant.items():
        assert {flag(r, "--regime") for r in rs} == {"paper"} and "--faults" in rs[0].args
        assert {flag(r, "--loss") for r in rs} <= {"0%", "20%"}
        assert {flag(r, "--staleness-threshold") for r in rs} <= {"0", "9999"}
        assert {flag(r, "--seed") for r in rs} == {"0", "1", "2"}
    assert {(flag(r, "--loss"), flag(r, "--stdev")) for r in by_variant["d-code"]} == {
        ("0%", "1000"), ("20%", "10"), ("20%", "1000")}
    assert {flag(r, "--pace-spread") for r in by_variant["spread-0.05"]} == {"0.05"}
    assert all(flag(r, "--pace-spread") is None for r in by_variant["fashion"])
    assert {flag(r, "--dataset") for r in by_variant["fashion"]} == {"fashion-mnist"}
    assert {flag(r, "--time-scale") for r in by_variant["k5"]} == {"5"}
    assert {flag(r, "--time-scale") for r in by_variant["spread-0"]} == {"10"}
    assert {flag(r, "--eval-samples") for r in by_variant["fashion-full-test"]} == {"0"}


def test_runs_go_repeat_by_repeat_and_alternate_the_load():
    runs = plan(SensitivityArgs(dry_run=True))
    seeds = [int(flag(r, "--seed")) for r in runs]
    assert seeds == sorted(seeds)  # a sweep cut short holds whole repeats of every variant
    first = runs[:6]
    assert len({r.name.split("/")[0] for r in first}) == 6  # one run of each variant in turn
    for variant in ("spread-0/", "fashion/"):  # L=0 and L=20% alternate within a variant, not in step across them
        losses = [flag(r, "--loss") for r in runs if r.name.startswith(variant) and flag(r, "--seed") == "0"]
        assert all(a != b for a, b in zip(losses, losses[1:])) and losses.count("0%") == losses.count("20%")
    assert {flag(r, "--loss") for r in runs[:2]} == {"0%", "20%"}


def test_collected_runs_are_not_run_again_and_bad_names_exit_2(tmp_path):
    run = plan(SensitivityArgs(dry_run=True, only="k5"))[0]
    variant, name = run.name.split("/")
    target = tmp_path / variant / "runs" / name
    target.mkdir(parents=True)
    (target / "config.json").write_text(json.dumps({"finished": {"stop_reason": "duration"}}))
    out = subprocess.run([sys.executable, "-m", "asyncfl.launch.sensitivity", "--dry-run", "--only", "k5",
                          "--results", str(tmp_path), "--sweep-dir", str(tmp_path / "sweep")],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "24 runs in 1 variants, 1 collected already" in out.stdout
    assert run.name not in out.stdout and "[23/23]" in out.stdout
    others = plan(SensitivityArgs(dry_run=True, only="k5"))[1:3]
    skipped = subprocess.run([sys.executable, "-m", "asyncfl.launch.sensitivity", "--dry-run", "--only", "k5", "--results",
                              str(tmp_path), "--skip", " ".join(r.name for r in others)],
                             capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert "[21/21]" in skipped.stdout and not any(r.name in skipped.stdout for r in others)
    bad = subprocess.run([sys.executable, "-m", "asyncfl.launch.sensitivity", "--only", "nope"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert bad.returncode == 2 and "unknown variant 'nope'" in bad.stderr and "Traceback" not in bad.stderr
    assert sensitivity.problems(SensitivityArgs(jobs=0)) == ["--jobs must be a positive integer"]
