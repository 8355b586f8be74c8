"""A verdict per claim of the paper from a grid's runs.csv (analysis/analyze.py's), with the numbers behind it.

    python -m asyncfl.analysis.verdicts results/old-loss/paper-regime/runs.csv      # prints a markdown table

The claims (Figs. 3-6 and the conclusion) and what is measured for each, fixed before the grid ran:

1. At L=0, as D grows, large S is less stable (deep dips): ``max_f1_drop`` and ``dips`` (falls of 0.1 or
   more between consecutive evaluations) of S=inf against S=0, at each D.
2. L=10% looks like L=0; L=20% has fewer updates and straighter, staircase lines (D=0, all S): rounds per
   server, ``f1_flat_frac`` (consecutive evaluations with an unchanged model) and ``f1_mean_abs_step``.
3. At L=20%, D=0 and D=600, large S is better: ``f1_auc_frac`` (mean F1 over the run) of S=inf against S=0.
4. At L=20%, D=10000, two of three runs show all S alike and one favours large S: per repeat, the range of
   ``f1_auc_frac`` over S, and S=inf against S=0.
5. The conclusion, four cases: asynchrony helps with unequal update frequencies and balanced data (L=20%,
   D=0), may help by chance with unequal frequencies and imbalanced data (L=20%, D=10000), hurts with
   small inequality and imbalanced data (L=0, D=10000), does nothing with small inequality and balanced
   data (L=0, D=0), all in ``f1_auc_frac`` of S=inf against S=0.

A difference *holds* when the means differ by more than the larger of the two standard deviations over
repeats and the repeats paired by seed agree in sign in at least two of three. Two configurations are
*alike* when their means differ by less than ``ALIKE`` (F1 over a run), about three times the sampling
error of a 2,000-sample score.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import tyro

ASYNC = 9999
ALIKE = 0.03  # F1 (mean over a run): differences below this are "alike"


@dataclass
class Comparison:
    a_mean: float
    a_std: float
    b_mean: float
    b_std: float
    paired_wins: int  # repeats where a > b
    pairs: int

    @property
    def diff(self) -> float:
        return self.a_mean - self.b_mean

    @property
    def holds(self) -> bool:
        """a differs from b beyond the spread, in the same direction in most paired repeats."""
        margin = max(self.a_std, self.b_std)
        same_sign = self.paired_wins if self.diff > 0 else self.pairs - self.paired_wins
        return abs(self.diff) > margin and same_sign >= max(2, (self.pairs + 1) // 2)

    def text(self, fmt: str = ".3f") -> str:
        return (f"{self.a_mean:{fmt}} ± {self.a_std:{fmt}} vs {self.b_mean:{fmt}} ± {self.b_std:{fmt}} "
                f"(Δ {self.diff:+{fmt}}; higher in {self.paired_wins}/{self.pairs} repeats)")


def cell(runs: pd.DataFrame, loss: str, stdev: float, staleness: int | None = None) -> pd.DataFrame:
    out = runs[(runs["loss"] == loss) & (runs["stdev"] == stdev)]
    return out if staleness is None else out[out["staleness"] == staleness]


def compare(a: pd.DataFrame, b: pd.DataFrame, metric: str) -> Comparison | None:
    if a.empty or b.empty:
        return None
    paired = a[["seed", metric]].merge(b[["seed", metric]], on="seed", suffixes=("_a", "_b"))
    return Comparison(float(a[metric].mean()), float(a[metric].std(ddof=1)) if len(a) > 1 else 0.0,
                      float(b[metric].mean()), float(b[metric].std(ddof=1)) if len(b) > 1 else 0.0,
                      int((paired[f"{metric}_a"] > paired[f"{metric}_b"]).sum()), len(paired))


def missing(*frames: pd.DataFrame) -> bool:
    return any(f.empty for f in frames)


def claim1(runs) -> tuple[str, str]:
    lines, diffs = [], {}
    for d in (0.0, 600.0, 10000.0):
        c = compare(cell(runs, "0%", d, ASYNC), cell(runs, "0%", d, 0), "max_f1_drop")
        dips = compare(cell(runs, "0%", d, ASYNC), cell(runs, "0%", d, 0), "dips")
        if c is None:
            return "missing cells", f"L=0, D={d:g} not run yet"
        diffs[d] = c
        lines.append(f"D={d:g}: largest dip S=inf {c.text()} S=0; dips ≥ 0.1 {dips.a_mean:.1f} vs {dips.b_mean:.1f}")
    grows = diffs[10000.0].diff > diffs[0.0].diff
    verdict = ("supported" if diffs[10000.0].holds and diffs[10000.0].diff > 0 and grows else
               "not supported" if not diffs[10000.0].holds else "partly")
    return verdict, "; ".join(lines)


def claim2(runs) -> tuple[str, str]:
    at = {loss: cell(runs, loss, 0.0) for loss in ("0%", "10%", "20%")}
    if missing(*at.values()):
        return "missing cells", "D=0 at some L not run yet"
    r = {loss: at[loss]["rounds_mean"].mean() for loss in at}
    flat = {loss: at[loss]["f1_flat_frac"].mean() for loss in at}
    step = {loss: at[loss]["f1_mean_abs_step"].mean() for loss in at}
    ten_like_zero = abs(r["10%"] / r["0%"] - 1) < 0.1 and abs(flat["10%"] - flat["0%"]) < 0.05
    twenty_fewer = r["20%"] / r["0%"] < 0.9 and flat["20%"] > flat["0%"] + 0.05
    verdict = ("supported" if ten_like_zero and twenty_fewer else
               "partly" if ten_like_zero or twenty_fewer else "not supported")
    detail = (f"rounds per server L=0/10/20%: {r['0%']:.1f} / {r['10%']:.1f} / {r['20%']:.1f}; "
              f"unchanged between evaluations: {flat['0%']:.2f} / {flat['10%']:.2f} / {flat['20%']:.2f}; "
              f"mean |ΔF1| per evaluation: {step['0%']:.3f} / {step['10%']:.3f} / {step['20%']:.3f} "
              f"(all S, {at['0%']['seed'].nunique()} repeats)")
    return verdict, detail


def claim3(runs) -> tuple[str, str]:
    parts, held = [], []
    for d in (0.0, 600.0):
        c = compare(cell(runs, "20%", d, ASYNC), cell(runs, "20%", d, 0), "f1_auc_frac")
        if c is None:
            return "missing cells", f"L=20%, D={d:g} not run yet"
        held.append(c.holds and c.diff > 0)
        parts.append(f"D={d:g}: mean F1 S=inf {c.text()} S=0")
    return ("supported" if all(held) else "partly" if any(held) else "not supported"), "; ".join(parts)


def claim4(runs) -> tuple[str, str]:
    c = cell(runs, "20%", 10000.0)
    if c.empty:
        return "missing cells", "L=20%, D=10000 not run yet"
    alike = favour = 0
    parts = []
    for seed, rep in c.groupby("seed"):
        auc = rep.set_index("staleness")["f1_auc_frac"]
        spread = auc.max() - auc.min()
        gap = auc.get(ASYNC, np.nan) - auc.get(0, np.nan)
        kind = "alike" if spread < ALIKE else "favours large S" if gap > ALIKE else "favours small S" if gap < -ALIKE else "mixed"
        alike += kind == "alike"
        favour += kind == "favours large S"
        parts.append(f"repeat {seed}: range over S {spread:.3f}, S=inf − S=0 {gap:+.3f} ({kind})")
    n = c["seed"].nunique()
    verdict = "supported" if (alike, favour) == (2, 1) and n == 3 else "not supported"
    return verdict, f"{alike} of {n} alike, {favour} favour large S (paper: 2 and 1); " + "; ".join(parts)


def claim5(runs) -> tuple[str, str]:
    cases = [("20%", 0.0, "helps", "unequal frequency, balanced"), ("20%", 10000.0, "may help", "unequal, imbalanced"),
             ("0%", 10000.0, "hurts", "small inequality, imbalanced"), ("0%", 0.0, "nothing", "small inequality, balanced")]
    parts, agree = [], 0
    for loss, d, paper, name in cases:
        c = compare(cell(runs, loss, d, ASYNC), cell(runs, loss, d, 0), "f1_auc_frac")
        if c is None:
            return "missing cells", f"L={loss}, D={d:g} not run yet"
        seen = ("helps" if c.holds and c.diff > 0 else "hurts" if c.holds and c.diff < 0 else
                "nothing" if abs(c.diff) < ALIKE else "unclear")
        # "may help, depending on the randomness": only a consistent loss contradicts it
        ok = seen == paper or (paper == "may help" and seen != "hurts")
        agree += ok
        parts.append(f"{name} (L={loss}, D={d:g}): paper '{paper}', here '{seen}': S=inf {c.text()} S=0")
    verdict = "supported" if agree == 4 else "not supported" if agree <= 1 else f"partly ({agree} of 4 cases)"
    return verdict, "; ".join(parts)


CLAIMS = [
    ("1. L=0: as D grows, large S less stable (dips)", claim1),
    ("2. L=10% like L=0; L=20% fewer updates, staircase", claim2),
    ("3. L=20%, D=0 and 600: large S better", claim3),
    ("4. L=20%, D=10000: 2 of 3 runs alike, 1 favours large S", claim4),
    ("5. Conclusion (four cases)", claim5),
]


def verdict_table(runs: pd.DataFrame) -> str:
    rows = ["| claim | verdict | numbers (mean ± std over repeats) |", "| --- | --- | --- |"]
    repeats = runs["seed"].nunique()
    for name, fn in CLAIMS:
        verdict, detail = fn(runs)
        if repeats < 2 and verdict != "missing cells":  # nothing can hold with one repeat
            verdict = f"undecided (1 repeat; leaning: {verdict})"
        rows.append(f"| {name} | **{verdict}** | {detail} |")
    return "\n".join(rows)


@dataclass
class Args:
    runs_csv: tyro.conf.Positional[Path]  # analysis/analyze.py's runs.csv of one grid (one regime, one transport)


def main(args: Args) -> int:
    runs = pd.read_csv(args.runs_csv)
    for column in ("regime", "transport", "tcp_cc", "dataset"):
        if column in runs and runs[column].nunique() > 1:
            print(f"verdicts: the runs differ in {column}; give one grid at a time", file=sys.stderr)
            return 2
    print(verdict_table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main(tyro.cli(Args, prog="python -m asyncfl.analysis.verdicts", description=__doc__)))
