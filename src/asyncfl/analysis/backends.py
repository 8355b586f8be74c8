"""The same cells on two stacks side by side: the native backend (with its emulation of PySyft 0.2.3's wire
and faults) and ``--backend pysyft`` (PySyft 0.2.3 itself), or any two grids run on the same cells.

    python -m asyncfl.analysis.backends results/pysyft/k1/pysyft results/pysyft/k1/native

Reads each folder's runs.csv (analysis/analyze.py's) and its runs' events.csv and f1_time.csv, and prints
one Markdown table per D: for each S and L, per grid, the mean over repeats (min-max) of rounds per
server, rounds abandoned, thread deaths with their causes (the exception named in events.csv's
``thread_ended`` detail, counted), the longest flat F1 stretch (paper-minutes), F1 at 5, 15 and 35
paper-minutes, mean F1 over the run, and the mean of the last five scores relative to L=0 (the same S if
that grid ran it, else its L=0 at any S, marked *).
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import tyro

from asyncfl.analysis import inputs, markdown
from asyncfl.core import regime as regime_mod
from asyncfl.core import schema

PAPER_MINUTES = (5, 15, 35)


def death_causes(events: pd.DataFrame) -> Counter:
    """The exceptions that ended a thread: the text before the first ':' of each ``thread_ended`` detail."""
    ended = events[events["event"] == "thread_ended"]["detail"].fillna("").astype(str)
    return Counter(detail.split(":")[0].strip() or "?" for detail in ended)


def f1_at(f1_time: pd.DataFrame, t_s: float) -> float:
    """The last score taken at or before ``t_s`` seconds (NaN before the first)."""
    before = f1_time[f1_time["time_s"] <= t_s + 1e-6]
    return float(before["f1"].iloc[-1]) if len(before) else float("nan")


def run_extras(run_dir: Path) -> dict:
    """What runs.csv does not hold: F1 at the paper-minutes and the causes of thread deaths."""
    config = inputs.read_config(run_dir)
    k = regime_mod.recorded_time_scale(config) or 1.0
    f1_time = inputs.read_csv(run_dir / schema.F1_TIME)
    out = {f"f1_at_{m}_min": f1_at(f1_time.iloc[:-1] if len(f1_time) > 2 else f1_time, m * 60 / k)
           for m in PAPER_MINUTES}
    events = inputs.read_csv(run_dir / schema.EVENTS) if (run_dir / schema.EVENTS).exists() else None
    out["causes"] = death_causes(events) if events is not None else Counter()
    return out


def spread(values: pd.Series, digits: int = 2) -> str:
    """'mean (min-max)', or the one value when the repeats agree."""
    lo, hi, mean = values.min(), values.max(), values.mean()
    return f"{mean:.{digits}f}" if lo == hi else f"{mean:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


def grid_rows(folder: Path) -> pd.DataFrame:
    runs = inputs.read_csv(folder / schema.RUNS)
    extras = [run_extras(folder / "runs" / name if (folder / "runs" / name).exists() else folder / name)
              for name in runs["run"]]
    for key in extras[0] if extras else []:
        runs[key] = [e[key] for e in extras]
    runs["grid"] = folder.name
    return runs


def cell_row(g: pd.DataFrame, base: pd.DataFrame, marked: bool) -> dict:
    causes = sum(g["causes"], Counter())
    rel = g["f1_last5"].mean() / base["f1_last5"].mean() if len(base) else float("nan")
    return {
        "repeats": len(g),
        "rounds per server": spread(g["rounds_mean"], 1),
        "abandoned": spread(g["abandoned_rounds"], 1),
        "thread deaths (causes)": f"{int(g['thread_deaths'].sum())}"
                                  + (f" ({', '.join(f'{c} {n}' for c, n in causes.most_common())})" if causes else ""),
        "longest flat, paper-min": spread(g["longest_flat_paper_min"], 1),
        **{f"F1 {m} min": spread(g[f"f1_at_{m}_min"]) for m in PAPER_MINUTES},
        "mean F1": spread(g["f1_auc_frac"], 3),
        "last-5 F1 vs L=0": f"{rel:.2f}{'*' if marked else ''}" if rel == rel else "",
        "starved": int(g["starved"].astype(object).where(g["starved"].notna(), "").astype(str).str.len().gt(0).sum()),
    }


def table(grids: list[pd.DataFrame], stdev: float) -> str:
    rows = []
    for runs in grids:
        runs = runs[runs["stdev"].fillna(0) == stdev]
        for (s, loss), g in runs.groupby(["staleness", "loss"], sort=True):
            base = runs[(runs["loss"] == "0%") & (runs["staleness"] == s)]
            marked = base.empty
            base = runs[runs["loss"] == "0%"] if marked else base
            rows.append({"_s": s, "S": "inf" if s == 9999 else str(s), "L": loss, "grid": g["grid"].iloc[0],
                         **cell_row(g, base, marked and loss != "0%")})
    frame = pd.DataFrame(rows).sort_values(["L", "_s", "grid"], kind="stable").drop(columns="_s")
    return markdown.frame_table(frame)


@dataclass
class Args:
    grids: tyro.conf.Positional[tuple[Path, ...]]  # results folders of analysis/collect.py, one per stack


def main(args: Args) -> int:
    for grid in args.grids:
        if not (grid / schema.RUNS).is_file():
            print(f"backends: no runs.csv in {grid} (python -m asyncfl.analysis.collect SWEEP {grid})", file=sys.stderr)
            return 2
    grids = [grid_rows(g) for g in args.grids]
    for d in sorted(set().union(*(set(g["stdev"].fillna(0)) for g in grids))):
        print(f"D={d:g}\n\n{table(grids, d)}\n")
    print("*: relative to that grid's L=0 at another S (it ran none at this S)")
    return 0


PROG = "python -m asyncfl.analysis.backends"

if __name__ == "__main__":
    sys.exit(inputs.guarded(main, tyro.cli(Args, prog=PROG, description=__doc__), PROG))
