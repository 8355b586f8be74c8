"""Calibrate the paper regime's round pace and spread from the paper's stated facts; prints, writes nothing.

    ./train.sh --dataset mnist-5k --staleness-threshold 0 --duration-s 6 --eval-every-rounds 1 \
        --eval-backlog 0 --seed 0 --out-dir out/calib-s0          # likewise --seed 1, 2
    .venv/bin/python -m bench.calibrate out/calib-s0 out/calib-s1 out/calib-s2

1. Pace: the runs' F1 per round (``f1_epoch.csv``: F1 when the slowest server completed round r; MNIST
   digits, L=0, D=0, the paper's model and training step) is averaged over the runs and smoothed; for each
   point the paper's Fig. 3 (L=0%, D=0) gives (F1 0.5 at 5 min, 0.8 at 15, 0.9 at 35), the first round at
   which this project reaches that F1 turns the minutes into seconds per round. The pace is their geometric
   mean.
2. Spread: asynchronous runs of 40 minutes at that pace are simulated (``regime.simulate_largest_staleness``)
   with the servers' paces spread around the mean; the spread is the one whose largest staleness is the
   paper's 16. For comparison it also simulates a spread between rounds (every round's pace drawn anew),
   and prints what each costs a synchronous run: the paper's Fig. 3 at L=0, D=0 shows S=0 as fast as
   the others, which a spread between rounds large enough for a staleness of 16 cannot give.
The constants it arrives at live in ``src/asyncfl/core/regime.py``; ``docs/regime.md`` shows the last calibration.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import tyro

from asyncfl.core import regime


@dataclass
class Args:
    runs: tyro.conf.Positional[list[Path]] = field(default_factory=list)  # run folders with an f1_epoch.csv scored every round (positional)
    smooth_rounds: int = 5  # window of the centred rolling mean over rounds, in rounds
    n_sims: int = 400  # simulated asynchronous runs per spread value
    seed: int = 0  # seed of the simulations


def mean_f1_per_round(runs: list[Path], window: int) -> pd.Series:
    curves = [pd.read_csv(r / "f1_epoch.csv").groupby("epoch")["f1"].mean() for r in runs]
    mean = pd.concat(curves, axis=1).mean(axis=1).sort_index()
    return mean.rolling(window, center=True, min_periods=1).mean()


def first_round_reaching(curve: pd.Series, f1: float) -> float:
    hit = curve[curve >= f1]
    if hit.empty:
        raise ValueError(f"the runs never reach F1 {f1}: run them longer")
    return float(hit.index[0])


def _sync_round_factor(rng: np.random.Generator, cv: float, n: int = 20000) -> float:
    """Mean of the slowest of 4 gamma(mean 1, cv) round lengths: how much longer an S=0 round lasts."""
    shape = 1.0 / cv**2
    return float(np.mean(rng.gamma(shape, 1.0 / shape, size=(n, 4)).max(axis=1)))


def main(args: Args) -> int:
    if not args.runs:
        print("calibrate: name the run folders (see --help)", file=sys.stderr)
        return 2
    curve = mean_f1_per_round(args.runs, args.smooth_rounds)
    print(f"pace, from {len(args.runs)} runs' F1 per round (smoothed over {args.smooth_rounds} rounds):")
    per_round = []
    for minutes, f1 in regime.PAPER_F1_AT_MIN:
        r = first_round_reaching(curve, f1)
        per_round.append(60 * minutes / r)
        print(f"  paper F1 {f1:.1f} at {minutes:4.0f} min; here F1 {f1:.1f} at round {r:4.0f} -> {per_round[-1]:5.1f} s/round")
    pace = float(np.exp(np.mean(np.log(per_round))))
    rounds = regime.PAPER_DURATION_S / pace
    print(f"  pace = geometric mean = {pace:.1f} s per round: {rounds:.0f} rounds per server in 40 minutes "
          f"(src/asyncfl/core/regime.py has PACE_S = {regime.PACE_S:g})")

    duration = regime.PAPER_DURATION_S
    rng = np.random.default_rng(args.seed)
    target = regime.PAPER_LARGEST_STALENESS
    print(f"spread between rounds (rejected): every round's pace gamma-distributed, mean {pace:.0f} s; median "
          f"(10th-90th percentile) largest staleness of {args.n_sims} simulated asynchronous 40-minute runs:")
    for cv in (0.25, 0.5, 0.75, 1.0):
        sims = [regime.simulate_largest_staleness([pace] * 4, duration, cv, rng) for _ in range(args.n_sims)]
        sync = _sync_round_factor(rng, cv)
        print(f"  cv {cv:.2f}: largest staleness {np.median(sims):4.1f} ({np.percentile(sims, 10):.0f}-"
              f"{np.percentile(sims, 90):.0f}); an S=0 round lasts {sync:.2f}x the mean pace, so S=0 makes "
              f"{100 * (1 - 1 / sync):.0f}% fewer updates than S=inf")
    print(f"spread between servers (used): paces evenly spread over (1 +- s) x {pace:.0f} s, exact rounds:")
    best = None
    for spread in np.round(np.arange(0.02, 0.31, 0.02), 2):
        paces = regime.server_paces(rng, 4, pace, spread)
        stale = regime.simulate_largest_staleness(paces, duration)
        rate_async = sum(1 / p for p in paces)
        rate_sync = 4 / max(paces)
        print(f"  s {spread:.2f}: largest staleness {stale:3d}; S=0 makes {100 * (1 - rate_sync / rate_async):4.1f}% "
              f"fewer updates than S=inf")
        if best is None or abs(stale - target) < abs(best[1] - target):
            best = (spread, stale)
    print(f"  closest to the paper's {target}: s {best[0]:.2f} (largest staleness {best[1]}); "
          f"src/asyncfl/core/regime.py has PACE_SPREAD = {regime.PACE_SPREAD:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main(tyro.cli(Args, prog="bench/calibrate.py", description=__doc__)))
