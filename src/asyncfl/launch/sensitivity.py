"""The sensitivity sweep of issue 26: the paper regime's choices the paper left open, each varied alone at
the cells that decide claims 1, 3 and 5, in one pool of JOBS runs.

    python -m asyncfl.launch.sensitivity --dry-run                 # list the runs
    python -m asyncfl.launch.sensitivity --jobs 5                  # run them (root or user namespaces)
    python -m asyncfl.analysis.sensitivity results/sensitivity     # the verdict of each claim per variant

Every variant is the regime's grid settings (K=10, ``--wire original --faults original``, CUBIC, mnist-5k,
pace spread 0.10, split seed 42) with one factor changed; its runs go to SWEEP_DIR/<variant>/ and are
collected into RESULTS/<variant>/ by ``analysis.collect``. Runs go repeat by repeat across all variants,
so a sweep cut short holds whole repeats of every variant; a run already finished in SWEEP_DIR or already
collected in RESULTS is skipped, so the sweep resumes in a later session from the committed results.
The rules that judge it were fixed before it ran: docs/grid.md, "Sensitivity".
"""

from __future__ import annotations

import itertools
import signal
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import tyro

from asyncfl.launch import sweep as sweep_mod
from asyncfl.launch.sweep import Run, SweepArgs
from asyncfl.process.runlog import ran_its_course

# The regime's grid settings every variant starts from (results/paper-regime/ ran these).
BASE = SweepArgs(regime="paper", time_scale=10, dataset="mnist-5k", extra_args="--faults original")
CELLS = dict(losses="0% 20%", staleness="0 9999")  # L=0 and 20%, S=0 and inf; D is per variant


@dataclass(frozen=True)
class Variant:
    name: str  # its folder under SWEEP_DIR and RESULTS
    factor: str  # what it changes, in words
    grids: tuple[dict, ...]  # SweepArgs fields over BASE + CELLS, one dict per sub-grid


VARIANTS = (
    Variant("d-code", "D in {0, 10, 1000} (the original's train_batch.sh, b5bdac8) instead of {0, 600, 10000}; "
            "D=0 is base's", ({"losses": "0%", "stdevs": "1000"}, {"losses": "20%", "stdevs": "10 1000"})),
    Variant("spread-0", "--pace-spread 0 (every server on one pace)",
            ({"stdevs": "0 10000", "extra_args": BASE.extra_args + " --pace-spread 0"},)),
    Variant("spread-0.05", "--pace-spread 0.05",
            ({"stdevs": "0 10000", "extra_args": BASE.extra_args + " --pace-spread 0.05"},)),
    Variant("fashion", "Fashion-MNIST (6,000 a class: D unscaled), scored on a 2,000-image subset",
            ({"stdevs": "0 10000", "dataset": "fashion-mnist"},)),
    Variant("fashion-full-test", "Fashion-MNIST scored on its whole 10,000-image test set, one cell",
            ({"losses": "0%", "stdevs": "10000", "staleness": "9999", "dataset": "fashion-mnist",
              "extra_args": BASE.extra_args + " --eval-samples 0"},)),
    Variant("k5", "K=5 (runs of 8 minutes) instead of K=10", ({"stdevs": "0 10000", "time_scale": 5},)),
)
NAMES = tuple(v.name for v in VARIANTS)


def variant_args(v: Variant, grid: dict, a: SensitivityArgs) -> SweepArgs:
    return replace(BASE, **{**CELLS, **grid}, repeats=a.repeats, jobs=a.jobs, dry_run=a.dry_run)


def interleave(runs: list[Run], zero_first: bool) -> list[Run]:
    """L=0 and L=20% runs alternately (an L=0 run costs about 1.6x the CPU of an L=20% one)."""
    zero = [r for r in runs if r.name.startswith("L0-")]
    rest = [r for r in runs if not r.name.startswith("L0-")]
    pairs = itertools.zip_longest(zero, rest) if zero_first else itertools.zip_longest(rest, zero)
    return [r for pair in pairs for r in pair if r is not None]


def plan(a: SensitivityArgs) -> list[Run]:
    """Every run of the chosen variants, named ``<variant>/<run>``, repeat by repeat across variants."""
    chosen = [v for v in VARIANTS if not a.only or v.name in a.only.split()]
    per_repeat: list[list[Run]] = [[] for _ in range(a.repeats)]
    for i, v in enumerate(chosen):
        runs = [r for grid in v.grids for r in sweep_mod.grid(variant_args(v, grid, a))]
        for rep in range(a.repeats):  # every other variant starts at L=20%, so the pool holds both
            mine = interleave([r for r in runs if r.name.endswith(f"-r{rep}")], zero_first=i % 2 == 0)
            per_repeat[rep].append([replace(r, name=f"{v.name}/{r.name}") for r in mine])
    ordered = []
    for variants in per_repeat:  # one run of each variant in turn, so the load mixes too
        ordered += [r for group in itertools.zip_longest(*variants) for r in group if r is not None]
    return ordered


@dataclass
class SensitivityArgs:
    """The sensitivity sweep: the variants of docs/grid.md "Sensitivity", JOBS runs at a time."""

    jobs: int = 5  # runs at once (a paced K=10 run takes ~20% of a core at L=0, ~14% at L=20%); SWEEP_DIR/jobs overrides it live
    repeats: int = 3  # seeds 0, 1, 2, ...
    only: str = ""  # space-separated variant names (empty: all): d-code spread-0 spread-0.05 fashion fashion-full-test k5
    sweep_dir: str = "sweeps/sensitivity"  # raw run folders, one subfolder per variant
    results: str = "results/sensitivity"  # collected runs: a run found finished here is not run again
    dry_run: bool = False  # list the runs without starting them
    skip: str = ""  # space-separated run names (<variant>/<run>) not to run now, e.g. ones another sweep is running


def problems(a: SensitivityArgs) -> list[str]:
    found = [f"--only: unknown variant {n!r}; choose from {' '.join(NAMES)}" for n in a.only.split() if n not in NAMES]
    found += [f"--{flag} must be a positive integer" for flag, v in (("jobs", a.jobs), ("repeats", a.repeats)) if v < 1]
    return found


def main(a: SensitivityArgs) -> int:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `--dry-run | head` ends quietly
    if bad := problems(a):
        print("sensitivity: " + "\nsensitivity: ".join(bad), file=sys.stderr)
        return 2
    sweep, results = Path(a.sweep_dir).resolve(), Path(a.results).resolve()
    runs = [r for r in plan(a) if r.name not in a.skip.split()]
    collected = [r for r in runs if ran_its_course(results / r.name.split("/")[0] / "runs" / r.name.split("/")[1])]
    todo = [r for r in runs if r not in collected]
    print(f"sensitivity: {len(runs)} runs in {len({r.name.split('/')[0] for r in runs})} variants, "
          f"{len(collected)} collected already in {results}; {a.jobs} at a time into {sweep}", flush=True)
    if not a.dry_run:
        for name in {r.name.split("/")[0] for r in todo}:
            (sweep / name).mkdir(parents=True, exist_ok=True)
    return sweep_mod.run_local(replace(BASE, jobs=a.jobs, dry_run=a.dry_run), sweep, todo)


if __name__ == "__main__":
    sys.exit(main(tyro.cli(SensitivityArgs, prog="python -m asyncfl.launch.sensitivity", description=__doc__)))
