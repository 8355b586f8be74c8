"""A verdict per claim of the paper from one grid's runs.csv, under a primary measure fixed before the grid
ran, and how each verdict moves under the secondary measures and under its threshold one step either side.

    python -m asyncfl.analysis.verdicts results/paper-regime/runs.csv     # verdicts, sensitivity, beside the paper

Each claim (Figs. 3-6 and the conclusion) is read one way first (``Claim.primary``); the other readings
(``Claim.secondaries``, ``Claim.step``) are printed beside it, never chosen after the fact. Why each
measure and threshold fits the paper's wording: docs/grid.md, "Verdict rules".

1. At L=0, as D grows, large S does worse, as deep dips: the count of dips (falls of F1 of ``size`` or
   more between consecutive evaluations) of S=inf against S=0 holds at D=10000 and is larger there than
   at D=0. Secondaries: the deepest dip; mean F1 over the run (lower at S=inf).
2. L=10% looks like L=0; L=20% has fewer updates (D=0, all S): rounds per server at L=10% within
   ``size`` of L=0, and at L=20% lower by more than ``size`` (relative). Secondaries: the share of
   unchanged evaluations (straighter lines: higher), the mean |change| per evaluation (less scribbled).
3. At L=20%, D=0 and D=600, large S is better: mean F1 over the run of S=inf against S=0 *helps* at both.
   Secondaries: final F1; the same measure under a paired t-test.
D=600 and D=10000 stand for a grid's middle and largest D (``d_roles``): 10 and 1000 in the original's code;
a grid without a middle D (a sensitivity variant) reads claim 3 at D=0 alone.
4. At L=20%, D=10000, most runs show all S alike and some favour large S: per repeat, the range of mean
   F1 over the four S is below ``size`` (alike), or S=inf - S=0 is ``size`` or more (favours large S);
   supported when more than half the repeats are alike, at least one favours large S and none small S.
5. The conclusion's four cases, S=inf against S=0 in mean F1: helps at L=20%, D=0; anything but hurts at
   L=20%, D=10000 ("may help, depending on the randomness"); hurts at L=0, D=10000; nothing at L=0, D=0.

A difference *helps* (or *hurts*) when it is ``size`` or more and holds; *nothing* when it is below
``size``; otherwise *unclear*. It *holds* (test "spread") when the means differ by more than the larger
standard deviation over repeats and the repeats paired by seed agree in sign in most pairs (2 of 3, 3 of
5); under test "ttest", when a paired t-test over the seeds gives p < 0.05.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import tyro

from asyncfl.analysis import inputs, markdown

ASYNC = 9999
DIFFERENCE = 0.10  # F1 (mean over a run): the smallest gap read as a difference (Fig. 6's "similar" runs: <= ~0.1)
STEP = 0.05  # one step of every threshold, for the sensitivity table
P_VALUE = 0.05
EPS = 1e-9  # F1 sums in floating point: 0.6 - 0.5 is "0.1 or more"


@dataclass(frozen=True)
class Reading:
    """One way to read a claim: the runs.csv column, its threshold and the test that a difference holds."""

    measure: str
    size: float
    test: str = "spread"

    def label(self) -> str:
        test = ", paired t-test" if self.test == "ttest" else ""
        return f"{self.measure} @ {self.size:g}{test}"


@dataclass
class Comparison:
    a: np.ndarray  # every repeat of configuration a
    b: np.ndarray
    a_paired: np.ndarray  # the repeats both have, by seed
    b_paired: np.ndarray

    @property
    def diff(self) -> float:
        return float(self.a.mean() - self.b.mean())

    @staticmethod
    def _std(x: np.ndarray) -> float:
        return float(x.std(ddof=1)) if len(x) > 1 else 0.0

    def holds(self, test: str = "spread") -> bool:
        if test == "ttest":
            d = self.a_paired - self.b_paired
            if len(d) < 2:
                return False
            if np.all(d == d[0]):  # a constant difference: t is infinite
                return bool(d[0] != 0)
            from scipy.stats import ttest_rel
            return bool(ttest_rel(self.a_paired, self.b_paired).pvalue < P_VALUE)
        wins = int((self.a_paired > self.b_paired).sum())
        pairs = len(self.a_paired)
        same_sign = wins if self.diff > 0 else int((self.a_paired < self.b_paired).sum())
        return abs(self.diff) > max(self._std(self.a), self._std(self.b)) and same_sign >= max(2, pairs // 2 + 1)

    def text(self, fmt: str = ".3f") -> str:
        wins = int((self.a_paired > self.b_paired).sum())
        return (f"{self.a.mean():{fmt}} ± {self._std(self.a):{fmt}} vs {self.b.mean():{fmt}} ± "
                f"{self._std(self.b):{fmt}} (Δ {self.diff:+{fmt}}; higher in {wins}/{len(self.a_paired)} repeats)")


def cell(runs: pd.DataFrame, loss: str, stdev: float, staleness: int | None = None) -> pd.DataFrame:
    out = runs[(runs["loss"] == loss) & (runs["stdev"] == stdev)]
    return out if staleness is None else out[out["staleness"] == staleness]


def compare(a: pd.DataFrame, b: pd.DataFrame, metric: str) -> Comparison | None:
    if a.empty or b.empty or metric not in a:
        return None
    paired = a[["seed", metric]].merge(b[["seed", metric]], on="seed", suffixes=("_a", "_b"))
    return Comparison(a[metric].to_numpy(float), b[metric].to_numpy(float),
                      paired[f"{metric}_a"].to_numpy(float), paired[f"{metric}_b"].to_numpy(float))


def async_vs_sync(runs, loss: str, d: float, metric: str) -> Comparison | None:
    return compare(cell(runs, loss, d, ASYNC), cell(runs, loss, d, 0), metric)


def d_roles(runs: pd.DataFrame) -> tuple[float | None, float]:
    """(middle D, largest D): the D of this grid playing the paper's 600 and 10000 (the original's code
    ran 10 and 1000; a sensitivity variant may run no middle D: None). docs/grid.md, "Sensitivity"."""
    ds = sorted(float(d) for d in runs["stdev"].dropna().unique() if d > 0)
    return (ds[0] if len(ds) > 1 else None), (ds[-1] if ds else 10000.0)


def effect(c: Comparison, reading: Reading) -> str:
    if abs(c.diff) < reading.size - EPS:
        return "nothing"
    if c.holds(reading.test):
        return "helps" if c.diff > 0 else "hurts"
    return "unclear"


def dips_column(depth: float) -> str:
    """analyze.py's column counting falls of ``depth`` or more."""
    return "dips" if round(depth, 2) == 0.10 else f"dips_ge_{round(depth * 100):03d}"


Verdict = tuple[str, str]


def claim1(runs, reading: Reading) -> Verdict:
    metric = dips_column(reading.size) if reading.measure == "dips" else reading.measure
    worse = -1.0 if reading.measure in ("f1_auc_frac", "final_f1", "f1_last5") else 1.0  # higher = worse?
    parts, gaps, held = [], {}, {}
    mid, large = d_roles(runs)
    for d in (0.0, *([mid] if mid is not None else []), large):
        c = async_vs_sync(runs, "0%", d, metric)
        if c is None and d == mid:
            continue  # shown where it ran; the verdict needs D=0 and the largest D only
        if c is None:
            return "missing cells", f"L=0, D={d:g} not run yet (or no column {metric})"
        gaps[d] = worse * c.diff
        held[d] = c.holds(reading.test) and gaps[d] > 0
        parts.append(f"D={d:g}: {metric} S=inf {c.text(fmt='.3g')} S=0")
    verdict = ("supported" if held[large] and gaps[large] > gaps[0.0] else
               "partly" if held[large] else "not supported")
    return verdict, "; ".join(parts)


def claim2(runs, reading: Reading) -> Verdict:
    at = {loss: cell(runs, loss, 0.0) for loss in ("0%", "10%", "20%")}
    if any(f.empty for f in at.values()) or reading.measure not in runs:
        return "missing cells", "D=0 at some L not run yet"
    direction = 1.0 if reading.measure == "f1_flat_frac" else -1.0  # how L=20% should move it
    m = {loss: float(at[loss][reading.measure].mean()) for loss in at}

    def change(loss):  # relative to L=0 (absolute where L=0's is 0)
        return m[loss] / m["0%"] - 1 if m["0%"] else m[loss] - m["0%"]
    ten_like_zero = abs(change("10%")) < reading.size
    twenty_moves = direction * change("20%") > reading.size
    verdict = ("supported" if ten_like_zero and twenty_moves else
               "partly" if ten_like_zero or twenty_moves else "not supported")
    repeats = at["0%"]["seed"].nunique()
    return verdict, (f"{reading.measure} L=0/10/20%: {m['0%']:.3g} / {m['10%']:.3g} / {m['20%']:.3g} "
                     f"(L=10% {change('10%'):+.0%}, L=20% {change('20%'):+.0%} of L=0; all S, {repeats} repeats)")


def claim3(runs, reading: Reading) -> Verdict:
    parts, helps = [], []
    mid = d_roles(runs)[0]
    for d in (0.0, *([mid] if mid is not None else [])):  # no middle D: read at D=0 alone
        c = async_vs_sync(runs, "20%", d, reading.measure)
        if c is None:
            return "missing cells", f"L=20%, D={d:g} not run yet"
        seen = effect(c, reading)
        helps.append(seen == "helps")
        parts.append(f"D={d:g}: S=inf {c.text()} S=0 ({seen})")
    return ("supported" if all(helps) else "partly" if any(helps) else "not supported"), "; ".join(parts)


def claim4(runs, reading: Reading) -> Verdict:
    large = d_roles(runs)[1]
    c = cell(runs, "20%", large)
    if c.empty or reading.measure not in c:
        return "missing cells", f"L=20%, D={large:g} not run yet"
    kinds, parts = [], []
    for seed, rep in c.groupby("seed"):
        per_s = rep.set_index("staleness")[reading.measure]
        spread = float(per_s.max() - per_s.min())
        gap = float(per_s.get(ASYNC, np.nan) - per_s.get(0, np.nan))
        kind = ("alike" if spread < reading.size - EPS else "favours large S" if gap >= reading.size - EPS else
                "favours small S" if gap <= -reading.size + EPS else "mixed")
        kinds.append(kind)
        parts.append(f"repeat {seed}: range over S {spread:.3f}, S=inf − S=0 {gap:+.3f} ({kind})")
    n, alike = len(kinds), kinds.count("alike")
    large, small = kinds.count("favours large S"), kinds.count("favours small S")
    verdict = ("supported" if alike > n / 2 and large >= 1 and small == 0 else
               "partly" if small == 0 and (alike > n / 2 or large >= 1) else "not supported")
    return verdict, f"{alike} of {n} alike, {large} favour large S, {small} small S (paper: 2, 1, 0 of 3); " + "; ".join(parts)


CASES = [("20%", 0.0, "helps", "unequal frequency, balanced"), ("20%", 10000.0, "may help", "unequal, imbalanced"),
         ("0%", 10000.0, "hurts", "small inequality, imbalanced"), ("0%", 0.0, "nothing", "small inequality, balanced")]


def claim5(runs, reading: Reading) -> Verdict:
    parts, agree = [], 0
    large = d_roles(runs)[1]
    for loss, d, paper, name in CASES:
        d = large if d else 0.0
        c = async_vs_sync(runs, loss, d, reading.measure)
        if c is None:
            return "missing cells", f"L={loss}, D={d:g} not run yet"
        seen = effect(c, reading)
        agree += seen == paper or (paper == "may help" and seen != "hurts")  # only a consistent loss contradicts it
        parts.append(f"{name} (L={loss}, D={d:g}): paper '{paper}', here '{seen}': S=inf {c.text()} S=0")
    verdict = "supported" if agree == 4 else "not supported" if agree <= 1 else f"partly ({agree} of 4 cases)"
    return verdict, "; ".join(parts)


@dataclass(frozen=True)
class Claim:
    name: str
    judge: Callable[[pd.DataFrame, Reading], Verdict]
    primary: Reading
    secondaries: tuple[Reading, ...] = field(default=())

    def threshold_steps(self) -> tuple[Reading, Reading]:
        return (replace(self.primary, size=round(self.primary.size - STEP, 4)),
                replace(self.primary, size=round(self.primary.size + STEP, 4)))


CLAIMS = [
    Claim("1. L=0: as D grows, large S less stable (dips)", claim1, Reading("dips", 0.10),
          (Reading("max_f1_drop", 0.10), Reading("f1_auc_frac", 0.10))),
    Claim("2. L=10% like L=0; L=20% fewer updates, staircase", claim2, Reading("rounds_mean", 0.10),
          (Reading("f1_flat_frac", 0.10), Reading("f1_mean_abs_step", 0.10))),
    Claim("3. L=20%, D=0 and 600: large S better", claim3, Reading("f1_auc_frac", DIFFERENCE),
          (Reading("final_f1", DIFFERENCE), Reading("f1_auc_frac", DIFFERENCE, "ttest"))),
    Claim("4. L=20%, D=10000: most runs alike, some favour large S", claim4, Reading("f1_auc_frac", DIFFERENCE),
          (Reading("final_f1", DIFFERENCE),)),
    Claim("5. Conclusion (four cases)", claim5, Reading("f1_auc_frac", DIFFERENCE),
          (Reading("final_f1", DIFFERENCE), Reading("f1_auc_frac", DIFFERENCE, "ttest"))),
]


def judged(claim: Claim, runs: pd.DataFrame, reading: Reading) -> Verdict:
    verdict, detail = claim.judge(runs, reading)
    if runs["seed"].nunique() < 2 and verdict != "missing cells":  # nothing can hold with one repeat
        verdict = f"undecided (1 repeat; leaning: {verdict})"
    return verdict, detail


def verdict_table(runs: pd.DataFrame) -> str:
    rows = []
    for claim in CLAIMS:
        verdict, detail = judged(claim, runs, claim.primary)
        rows.append([claim.name, claim.primary.label(), f"**{verdict}**", detail])
    return markdown.table(["claim", "primary measure", "verdict", "numbers (mean ± std over repeats)"], rows)


def sensitivity_table(runs: pd.DataFrame) -> str:
    rows = []
    for claim in CLAIMS:
        def short(reading):
            return f"{judged(claim, runs, reading)[0]} ({reading.label()})"
        lower, higher = claim.threshold_steps()
        rows.append([claim.name, judged(claim, runs, claim.primary)[0], "; ".join(short(r) for r in claim.secondaries),
                     short(lower), short(higher)])
    return markdown.table(["claim", "primary", "under each secondary measure", "threshold one step lower",
                           "one step higher"], rows)


# Read off the paper's Figs. 4 and 5 (D=0, at 40 minutes): F1 relative to L=0 and the longest flat stretch.
PAPER_AT_40_MIN = {("10%", 0): ("~1.0", "-"), ("10%", ASYNC): ("~1.0", "-"), ("20%", 0): ("0.60", "~12"),
                   ("20%", ASYNC): ("0.74", "-")}


def beside_the_paper(runs: pd.DataFrame) -> str:
    """Per D and S, at L=10% and 20%: F1 at the end (mean of the last five scores) relative to L=0, the
    longest flat stretch (paper-minutes) and the update inequality (largest / smallest rounds per server),
    means over repeats, with the paper's values where its figures give them."""
    paced = "longest_flat_paper_min" in runs and runs["longest_flat_paper_min"].notna().any()
    flat_column, unit = ("longest_flat_paper_min", "paper-min") if paced else ("longest_flat_s", "s")
    rows = []
    for d in sorted(runs["stdev"].dropna().unique()):
        for s in sorted(runs["staleness"].unique()):
            base = cell(runs, "0%", d, s)
            for loss in ("10%", "20%"):
                c = cell(runs, loss, d, s)
                if c.empty or base.empty:
                    continue
                ratio = c["f1_last5"].mean() / base["f1_last5"].mean()
                paper_f1, paper_flat = PAPER_AT_40_MIN.get((loss, s), ("-", "-")) if d == 0 else ("-", "-")
                flat = c[flat_column].mean()
                rows.append([f"{d:g}", "inf" if s == ASYNC else s, loss, f"{ratio:.2f} ({paper_f1})",
                             f"{flat:.1f} ({paper_flat})", f"{c['rounds_max_min_ratio'].mean():.2f}",
                             f"{c['rounds_mean'].mean():.1f}", c["seed"].nunique()])
    return markdown.table(["D", "S", "L", "F1 at the end vs L=0 (paper)", f"longest flat F1, {unit} (paper, paper-min)",
                           "largest / smallest rounds", "rounds per server", "repeats"], rows)


def repeats_line(runs: pd.DataFrame) -> str:
    counts = runs.groupby(["loss", "stdev", "staleness"])["seed"].nunique()
    flags = runs["starved"].astype(object).where(runs["starved"].notna(), "") if "starved" in runs else pd.Series([], dtype=object)
    starved = int((flags.astype(str).str.len() > 0).sum())
    return (f"{len(runs)} runs in {len(counts)} configurations, {counts.min()}-{counts.max()} repeats each; "
            f"{starved} flagged starved")


@dataclass
class Args:
    runs_csv: tyro.conf.Positional[Path]  # analysis/analyze.py's runs.csv of one grid (one regime, one transport)


def main(args: Args) -> int:
    if not args.runs_csv.is_file():
        print(f"verdicts: no file {args.runs_csv}", file=sys.stderr)
        return 2
    runs = inputs.read_csv(args.runs_csv)
    for column in ("regime", "transport", "tcp_cc", "dataset", "loss_mechanism", "wire", "faults"):
        if column in runs and len(set(runs[column].dropna()) - {"none"}) > 1:  # L=0 has no loss mechanism
            print(f"verdicts: the runs differ in {column}; give one grid at a time", file=sys.stderr)
            return 2
    print(repeats_line(runs), "\n")
    print(verdict_table(runs), "\n")
    print(sensitivity_table(runs), "\n")
    print(beside_the_paper(runs))
    return 0


PROG = "python -m asyncfl.analysis.verdicts"

if __name__ == "__main__":
    sys.exit(inputs.guarded(main, tyro.cli(Args, prog=PROG, description=__doc__), PROG))
