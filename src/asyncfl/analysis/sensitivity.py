"""The verdict of each claim under each choice the paper left open: issue 26's sensitivity sweep beside the
landed grid, read by the rules fixed before it ran (docs/grid.md, "Sensitivity").

    python -m asyncfl.analysis.sensitivity results/sensitivity     # after analysis.collect into each variant

Reads ``<results>/<variant>/runs.csv`` (one per variant of launch/sensitivity.py) and the base grid's
runs.csv (the landed paper-regime grid, at the same cells and seeds). A variant without D=0 runs (d-code)
takes base's D=0 cells; one scored on the whole test set (``eval_samples=0``) is no column of its own but
the scoring-noise comparison with the variant of its dataset scored on the subset. Writes into ``<results>``:
``runs.csv`` (every run, with its ``variant``), ``summary.csv`` (per variant and cell: repeats, means and
spreads), ``verdicts.md`` (the claims x variants table, the scoring-noise and K tables, and each variant's
verdicts with their sensitivity), ``sensitivity.png`` (mean F1 of S=0 and S=inf per cell and variant),
and prints verdicts.md.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import tyro

from asyncfl.analysis import inputs, markdown
from asyncfl.analysis import verdicts as v
from asyncfl.core import schema

BASE = "base"
CELL = ["loss", "stdev", "staleness"]
SEEDS = (0, 1, 2)
NOISE_CELL = ("0%", 10000.0, v.ASYNC)  # fashion-full-test's cell, beside fashion's
MEASURES = ["f1_auc_frac", "final_f1", "dips", "max_f1_drop", "rounds_mean", "rounds_max_min_ratio",
            "abandoned_rounds", "thread_deaths", "fresh_fail_frac", "later_fail_frac", "f1_mean_abs_step"]
NOT_JUDGED = {"2. L=10% like L=0; L=20% fewer updates, staircase": "not judged (no L=10%)"}


def base_runs(grid: pd.DataFrame) -> pd.DataFrame:
    """The landed grid's runs at the sensitivity cells (L 0/20%, D 0/10000, S 0/inf), seeds 0-2."""
    keep = (grid["loss"].isin(["0%", "20%"]) & grid["stdev"].isin([0.0, 10000.0])
            & grid["staleness"].isin([0, v.ASYNC]) & grid["seed"].isin(SEEDS))
    return grid[keep]


def load(results: Path, base_csv: Path) -> pd.DataFrame:
    """Every run of the sweep and of the base cells, with a ``variant`` column (the folder's name)."""
    base = base_runs(inputs.read_csv(base_csv)).assign(variant=BASE)
    frames = [base]
    variants = sorted(inputs.folders([results])[0].glob("*/runs.csv"))
    if not variants:
        raise inputs.InputError(f"{results}: no <variant>/runs.csv in it (analysis.collect each variant's sweep into "
                                f"{results}/<variant> first)")
    for path in variants:
        runs = inputs.read_csv(path).assign(variant=path.parent.name)
        if not (runs["stdev"] == 0.0).any() and not full_test(runs).any():  # its D=0 cells are base's (docs/grid.md)
            runs = pd.concat([base[base["stdev"] == 0.0].assign(variant=path.parent.name), runs])
        frames.append(runs)
    runs = pd.concat(frames, ignore_index=True)
    return runs[["variant", *[c for c in runs.columns if c != "variant"]]]


def summary(runs: pd.DataFrame) -> pd.DataFrame:
    present = [m for m in MEASURES if m in runs]
    grouped = runs.groupby(["variant", *CELL], sort=False)
    out = grouped[present].agg(["mean", "std"])
    out.columns = [f"{m}_{stat}" for m, stat in out.columns]
    out.insert(0, "repeats", grouped["seed"].nunique())
    out.insert(1, "starved", grouped["starved"].apply(lambda s: int(s.astype(object).where(s.notna(), "").astype(str)
                                                                      .str.len().gt(0).sum())) if "starved" in runs else 0)
    return out.reset_index()


def verdict(runs: pd.DataFrame, claim: v.Claim) -> str:
    if claim.name in NOT_JUDGED:
        return NOT_JUDGED[claim.name]
    return v.judged(claim, runs, claim.primary)[0]


def full_test(runs: pd.DataFrame) -> pd.Series:
    """Rows scored on the whole test set (a settings change the grid's verdicts are not read from)."""
    return runs["settings"].astype(object).fillna("").astype(str).str.contains("eval_samples=0")


def variant_names(runs: pd.DataFrame) -> list[str]:
    """base first, then the variants in folder order; the whole-test-set one is the noise comparison's."""
    return [BASE] + sorted(set(runs["variant"]) - set(runs.loc[full_test(runs), "variant"]) - {BASE})


def claims_table(runs: pd.DataFrame) -> str:
    """Rows: claims; columns: variants; each cell the primary verdict, marked where it differs from base's."""
    names = variant_names(runs)
    rows = []
    for claim in v.CLAIMS:
        seen = {n: verdict(runs[runs["variant"] == n], claim) for n in names}
        cells = [seen[n] if n == BASE or seen[n] == seen[BASE] or seen[n].startswith(("missing", "undecided"))
                 else f"**{seen[n]}** (moves)" for n in names]
        rows.append([claim.name, *cells])
    repeats = runs.groupby("variant")["seed"].nunique()
    rows.append(["runs (repeats)", *(f"{(runs['variant'] == n).sum()} ({repeats[n]})" for n in names)])
    return markdown.table(["claim", *names], rows)


def gaps_table(runs: pd.DataFrame) -> str:
    """The primary measure behind claims 3 and 5: mean F1 over the run, S=inf minus S=0, per case and variant."""
    names = variant_names(runs)
    rows = []
    for loss, d, paper, what in v.CASES:
        cells = []
        for n in names:
            sub = runs[runs["variant"] == n]
            large = v.d_roles(sub)[1]
            c = v.async_vs_sync(sub, loss, large if d else 0.0, "f1_auc_frac")
            cells.append("-" if c is None else f"{c.diff:+.3f} ({v.effect(c, v.CLAIMS[4].primary)})")
        rows.append([f"{what}, L={loss}, D={'largest' if d else 0} (paper: {paper})", *cells])
    dips = []
    for n in names:
        sub = runs[runs["variant"] == n]
        c = v.async_vs_sync(sub, "0%", v.d_roles(sub)[1], "dips")
        dips.append("-" if c is None else f"{c.a.mean():.1f} vs {c.b.mean():.1f}")
    rows.append(["claim 1: dips ≥ 0.10 a run, S=inf vs S=0, L=0, largest D", *dips])
    return markdown.table(["case (mean F1, S=inf − S=0)", *names], rows)


def binomial_se(f1: float, n: int) -> float:
    return float(np.sqrt(f1 * (1 - f1) / n)) if n else float("nan")


def noise_table(runs: pd.DataFrame, subset: int = 2000, whole: int = 10000) -> str:
    """The whole-test-set variant beside the variant of its dataset scored on the subset, at the same cell:
    does scoring on 10,000 images narrow the spread over repeats?"""
    head = ["scored on", "repeats", "mean F1 over the run", "final F1", "dips ≥ 0.10", "mean abs step", "SE of one score"]
    rows = []
    full = runs[full_test(runs)]
    if full.empty:
        return "no variant scored on the whole test set yet"
    dataset, name_full = full["dataset"].iloc[0], full["variant"].iloc[0]
    subset_runs = runs[(runs["dataset"] == dataset) & ~full_test(runs) & (runs["variant"] != BASE)]
    name_subset = subset_runs["variant"].iloc[0] if len(subset_runs) else "-"
    for frame, name, n in ((subset_runs, name_subset, subset), (full, name_full, whole)):
        c = v.cell(frame, *NOISE_CELL)
        if c.empty:
            rows.append([f"{n:,} images ({name})", 0, "-", "-", "-", "-", "-"])
            continue
        def ms(col, fmt=".3f"):
            return f"{c[col].mean():{fmt}} ± {c[col].std(ddof=1) if len(c) > 1 else 0:{fmt}}"
        rows.append([f"{n:,} images ({name})", len(c), ms("f1_auc_frac"), ms("final_f1"), ms("dips", ".1f"),
                     ms("f1_mean_abs_step", ".4f"), f"{binomial_se(c['final_f1'].mean(), n):.4f}"])
    return markdown.table(head, rows)


def k_table(runs: pd.DataFrame) -> str:
    """Connection setup at L=20% per variant: a connection's first round against its later ones."""
    names = variant_names(runs)
    rows = []
    for n in names:
        c = runs[(runs["variant"] == n) & (runs["loss"] == "20%")]
        if c.empty:
            continue
        rows.append([n, f"{c['fresh_fail_frac'].mean():.1%}", f"{c['later_fail_frac'].mean():.1%}",
                     f"{c['abandoned_rounds'].mean():.1f}", f"{c['thread_deaths'].mean():.2f}", f"{c['rounds_mean'].mean():.1f}"])
    return markdown.table(["variant", "fresh connections' first rounds failed", "later rounds failed",
                           "abandoned rounds a run", "server threads ended a run", "rounds per server"], rows)


def per_variant(runs: pd.DataFrame) -> str:
    parts = []
    for n in variant_names(runs):
        sub = runs[runs["variant"] == n]
        parts += [f"### {n}", "", v.repeats_line(sub), "", v.verdict_table(sub), "", v.sensitivity_table(sub), ""]
    return "\n".join(parts)


def figure(runs: pd.DataFrame, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = variant_names(runs)
    fig, axes = plt.subplots(1, 4, figsize=(16, 4), sharey=True)
    for ax, (loss, d, paper, what) in zip(axes, v.CASES):
        x = np.arange(len(names))
        for k, (s, label) in enumerate(((0, "S=0"), (v.ASYNC, "S=inf"))):
            means, stds = [], []
            for n in names:
                sub = runs[runs["variant"] == n]
                c = v.cell(sub, loss, v.d_roles(sub)[1] if d else 0.0, s)["f1_auc_frac"]
                means.append(c.mean() if len(c) else np.nan)
                stds.append(c.std(ddof=1) if len(c) > 1 else 0.0)
            ax.bar(x + (k - 0.5) * 0.38, means, 0.38, yerr=stds, label=label, capsize=2)
        ax.set_xticks(x, names, rotation=40, ha="right", fontsize=8)
        ax.set_title(f"L={loss}, D={'largest' if d else 0}\n(paper: large S {paper})", fontsize=9)
    axes[0].set_ylabel("mean F1 over the run")
    axes[0].legend(fontsize=8)
    fig.suptitle("Sensitivity: each variant changes one choice of the paper regime (K=10, original wire and faults, "
                 "CUBIC, mnist-5k); mean ± std over repeats", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclass
class Args:
    results: tyro.conf.Positional[Path]  # the sweep's results folder (one runs.csv per variant), e.g. results/sensitivity
    base: Path = Path("results/paper-regime/runs.csv")  # the landed grid the variants depart from
    figures: bool = True  # draw sensitivity.png


def main(args: Args) -> int:
    if not args.base.is_file():
        print(f"sensitivity: no base grid at {args.base}", file=sys.stderr)
        return 2
    runs = load(args.results, args.base)
    runs.to_csv(args.results / schema.RUNS, index=False)
    summary(runs).to_csv(args.results / schema.SUMMARY, index=False)
    text = "\n\n".join([
        "## Verdicts under the primary measure, per variant", claims_table(runs),
        "## The gaps behind them", gaps_table(runs),
        "## Scoring noise (L=0, D=10000, S=inf)", noise_table(runs),
        "## Connection setup at L=20%", k_table(runs),
        "## Each variant's verdicts and their sensitivity", per_variant(runs)])
    (args.results / "verdicts.md").write_text(text + "\n")
    print(text)
    if args.figures:
        figure(runs, args.results / "sensitivity.png")
    return 0


PROG = "python -m asyncfl.analysis.sensitivity"

if __name__ == "__main__":
    sys.exit(inputs.guarded(main, tyro.cli(Args, prog=PROG, description=__doc__), PROG))
