"""Set grids side by side, cell by cell, each relative to its own L=0: how much of its F1 and its rounds a
loss keeps, how unequal it makes the servers' update counts, how long F1 stays flat and how often rounds
stall out.

    python -m asyncfl.analysis.compare results/silent-loss/k10-fashion-mnist results/paper-regime-fashion-nftables-output-bbr

Reads each folder's runs.csv (analysis/analyze.py's), keeps D=0, and prints one Markdown table: per grid, dataset,
S and L the mean over repeats (min-max where repeats differ) of rounds per server, largest/smallest rounds
per server, F1 (mean of the last five scores), that F1 over the same grid's L=0 at the same S, the longest
flat stretch of F1 (paper minutes in the paper regime, else seconds), abandoned rounds and the p99 stall.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import tyro

from asyncfl.analysis import inputs, markdown
from asyncfl.core import schema


def cell_table(runs: pd.DataFrame, label: str) -> list[dict]:
    runs = runs[runs["stdev"].fillna(0) == 0]
    out = []
    for (dataset, s, loss), g in runs.groupby(["dataset", "staleness", "loss"], sort=True):
        clean = runs[(runs["dataset"] == dataset) & (runs["staleness"] == s) & (runs["loss"] == "0%")]
        flat = g["longest_flat_paper_min"] if g["longest_flat_paper_min"].notna().all() else g["longest_flat_s"]
        out.append({
            "grid": label, "dataset": dataset, "S": "inf" if s == 9999 else str(s), "L": loss, "runs": len(g),
            "rounds": f"{g['rounds_mean'].mean():.1f}",
            "max/min": f"{g['rounds_max_min_ratio'].mean():.2f} ({g['rounds_max_min_ratio'].min():.2f}-"
                       f"{g['rounds_max_min_ratio'].max():.2f})",
            "F1 last 5": f"{g['f1_last5'].mean():.3f} +- {g['f1_last5'].std(ddof=1) if len(g) > 1 else 0:.3f}",
            "vs L=0": f"{g['f1_last5'].mean() / clean['f1_last5'].mean():.2f}" if len(clean) else "",
            "longest flat": f"{flat.mean():.1f} (max {flat.max():.1f})",
            "abandoned": f"{g['abandoned_rounds'].mean():.1f}",
            "stall p99 s": f"{g['stall_p99_s'].mean():.2f}" if "stall_p99_s" in g and g["stall_p99_s"].notna().any() else "",
        })
    return out


@dataclass
class Args:
    grids: tyro.conf.Positional[tuple[Path, ...]]  # results folders (or sweep folders) with analysis/analyze.py's runs.csv


def main(args: Args) -> int:
    rows = []
    for grid in args.grids:
        path = grid / schema.RUNS
        if not path.exists():
            print(f"compare: no runs.csv in {grid} (run python -m asyncfl.analysis.analyze {grid} first)", file=sys.stderr)
            return 2
        runs = inputs.read_csv(path)
        for column in ("f1_last5", "longest_flat_s", "longest_flat_paper_min"):
            if column not in runs:
                print(f"compare: {path} predates {column}: run python -m asyncfl.analysis.analyze {grid}/runs again", file=sys.stderr)
                return 2
        rows += cell_table(runs, grid.name)
    print(markdown.frame_table(pd.DataFrame(rows)))
    return 0


PROG = "python -m asyncfl.analysis.compare"

if __name__ == "__main__":
    sys.exit(inputs.guarded(main, tyro.cli(Args, prog=PROG, description=__doc__), PROG))
