"""Draw the study's figures (and a figure per run) from run folders' CSVs alone.

    python -m asyncfl.analysis.plot sweeps/20261128-001500        # a sweep folder: Figures 3-6
    python -m asyncfl.analysis.plot out/L0-D0-S9999-20261127-...  # one run folder: its run.png

Figures, F1 against training time, one curve per staleness threshold S ("S=0 (sync)", "S=6", "S=12",
"S=inf (async)"); several repeats of a configuration are drawn as their mean with a band from the
lowest to the highest repeat:
- fig3_imbalance.png: the effect of D at L=0% (one panel per D);
- fig4_loss.png: the effect of L at D=0 (one panel per L present);
- fig5_imbalance_x_loss.png: every D x L;
- fig6_repeats.png: each repeat on its own at the largest L and D present (the paper's L=20%, D=10000).
A run's own figure (run.png, in its folder) shows F1 over time and each server's rounds over time.
"""

from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import tyro

from asyncfl.analysis import inputs
from asyncfl.analysis.analyze import run_config
from asyncfl.analysis.inputs import find_runs, interrupted
from asyncfl.core import regime as regime_mod
from asyncfl.core import schema

COLOURS = {0: "tab:blue", 6: "tab:orange", 12: "tab:green"}
ASYNC = 9999  # this S or more is the paper's S = inf


RULE_COLOURS = {"fedavg": "black", "fedasync": "tab:purple", "fedbuff": "tab:brown"}


def s_label(s: int) -> str:
    return "S=0 (sync)" if s == 0 else "S=inf (async)" if s >= ASYNC else f"S={s}"


def s_colour(s: int) -> str:
    return "tab:red" if s >= ASYNC else COLOURS.get(s, None) or f"C{s % 10}"


def paper_minutes(config: dict) -> float | None:
    """Minutes of the paper's clock per second of a paper-regime run (K / 60); None for other regimes."""
    return None if (k := regime_mod.recorded_time_scale(config)) is None else k / 60


def load_runs(run_dirs: list[Path]) -> pd.DataFrame:
    """One row per run; a paper-regime run's F1 is put on the paper's clock (minutes), others stay in s."""
    rows = []
    for d in run_dirs:
        config = inputs.read_config(d)
        f1 = inputs.read_csv(d / schema.F1_TIME)
        scale = paper_minutes(config)
        if scale is not None:
            f1 = f1.assign(time_s=f1["time_s"] * scale)
        rows.append({"dir": d, "seed": config["args"].get("seed"), **run_config(config), "f1": f1})
    return pd.DataFrame(rows)


def draw_curves(ax, runs: pd.DataFrame, title: str) -> None:
    """One curve per aggregation rule and S: the mean over repeats on a common time grid, with a min-max
    band. The study's rule is labelled by S alone."""
    for (rule, s), group in sorted(runs.groupby(["aggregation", "staleness"]), key=lambda kv: (kv[0][0] != "ssp", kv[0])):
        label, colour = (s_label(s), s_colour(s)) if rule == "ssp" else (
            f"{rule}" + (f", {s_label(s)}" if s < ASYNC and not rule.startswith("fedavg") else ""),
            RULE_COLOURS.get(rule.split("(")[0], "tab:gray"))
        end = min(float(f["time_s"].iloc[-1]) for f in group["f1"])
        grid = np.unique(np.concatenate([f["time_s"].to_numpy(float) for f in group["f1"]]))
        grid = grid[grid <= end]
        curves = np.stack([np.interp(grid, f["time_s"], f["f1"]) for f in group["f1"]])
        ax.plot(grid, curves.mean(axis=0), color=colour, lw=1.4 if s >= ASYNC else 1.0,
                ls="-" if rule == "ssp" else "--", label=label + (f" (n={len(curves)})" if len(curves) > 1 else ""))
        if len(curves) > 1:
            ax.fill_between(grid, curves.min(axis=0), curves.max(axis=0), color=colour, alpha=0.15, lw=0)
    ax.set_title(title, fontsize=10)
    ax.set_ylim(0, 1)
    paper = runs["regime"].iloc[0].startswith("paper")
    ax.set_xlabel("time (minutes of the paper's clock)" if paper else "time (s)")
    ax.set_ylabel("f1 score")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")


def loss_value(loss: str) -> float:
    """The paper's L for a run whose links all have the same loss ("10%"); NaN for per-server sets."""
    try:
        return float(loss.rstrip("%")) if loss.endswith("%") else float("nan")
    except ValueError:
        return float("nan")


def panel_grid(n_rows: int, n_cols: int):
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(4.6 * n_cols, 3.3 * n_rows), squeeze=False)
    return fig, axes


def sweep_figures(runs: pd.DataFrame, out: Path) -> list[Path]:
    """Figures 3-6 for every (regime, transport, TCP, dataset, servers, speed ratios, split) family in the sweep,
    which are never mixed in one curve; a sweep with several families gets a suffix per family, and every
    figure's title names its regime, transport, wire, faults and dataset."""
    if "tcp_cc" not in runs:  # summaries written before --tcp-cc
        runs = runs.assign(tcp_cc="default (unrecorded)")
    for column in ("wire", "faults"):  # summaries written before --wire and --faults
        if column not in runs:
            runs = runs.assign(**{column: "modern"})
    keys = ["regime", "transport", "wire", "faults", "tcp_cc", "dataset", "n_servers", "speeds", "partition"]
    families = list(runs.groupby(keys, sort=True))
    written = []
    for values, family in families:
        regime, transport, wire, faults, tcp_cc, dataset, n, speeds, partition = values
        suffix = "" if len(families) == 1 else "_" + "_".join(
            str(v).replace(" ", "_").replace("=", "") for v in values)
        context = f"{regime} regime, {transport}, wire {wire}, faults {faults}, TCP {tcp_cc}, {dataset}, {n} servers" + (
            f", speeds {speeds}" if set(speeds.split()) != {"1"} else "")
        written += family_figures(family, out, suffix, context)
    return written


def family_figures(runs: pd.DataFrame, out: Path, suffix: str, context: str = "") -> list[Path]:
    runs = runs.assign(L=runs["loss"].map(loss_value))
    uniform = runs[runs["L"].notna()]
    written = []
    stdevs, losses = sorted(uniform["stdev"].unique()), sorted(uniform["L"].unique())
    base_loss, base_stdev = (losses[0] if losses else None), (stdevs[0] if stdevs else None)

    def save(fig, name: str, title: str) -> None:
        width = max(30, int(fig.get_figwidth() * 11))  # characters that fit the figure at this font size
        fig.suptitle("\n".join([title, *textwrap.wrap(context, width)]), fontsize=10)
        fig.tight_layout()
        path = out / f"{name}{suffix}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    def cell(d, loss, seed=None) -> tuple[pd.DataFrame, str]:
        runs = uniform[(uniform["stdev"] == d) & (uniform["L"] == loss)]
        if seed is not None:
            return runs[runs["seed"] == seed], f"L={loss:g}%, D={d:g}, repeat {seed}"
        return runs, f"L={loss:g}%, D={d:g}"

    def figure(cells: list[tuple[pd.DataFrame, str]], n_rows: int, name: str, title: str) -> None:
        fig, axes = panel_grid(n_rows, len(cells) // n_rows)
        for ax, (runs, panel_title) in zip(axes.flat, cells):
            if len(runs):
                draw_curves(ax, runs, panel_title)
            else:
                ax.set_axis_off()
        save(fig, name, title)

    if not len(uniform):
        return written
    figure([cell(d, base_loss) for d in stdevs], len(stdevs), "fig3_imbalance", "Effect of data imbalance D")
    figure([cell(base_stdev, loss) for loss in losses], len(losses), "fig4_loss", "Effect of network loss L")
    if len(stdevs) > 1 or len(losses) > 1:
        figure([cell(d, loss) for d in stdevs for loss in losses], len(stdevs), "fig5_imbalance_x_loss",
               "Data imbalance x network loss")
    worst = uniform[(uniform["L"] == losses[-1]) & (uniform["stdev"] == stdevs[-1])]
    seeds = sorted(worst["seed"].unique())
    if seeds:  # a grid still running may not have reached its last cell
        figure([cell(stdevs[-1], losses[-1], seed) for seed in seeds], 1, "fig6_repeats",
               "Repeats at the largest loss and imbalance")
    return written


def epoch_times(f1_epoch: pd.DataFrame | None, rounds: pd.DataFrame) -> pd.DataFrame:
    """The round-wise scores at the time each was due: when the slowest server completed that round (the
    latest of the servers' first arrivals at it), so a short run's few time-wise points have company."""
    if f1_epoch is None or not len(f1_epoch) or not len(rounds):
        return pd.DataFrame(columns=["time_s", "f1"])
    reached = rounds.groupby(["server", "round"])["time_s"].min().unstack("server").sort_index()
    reached = reached[::-1].cummin()[::-1]  # a round is reached once any later one is (a retried round)
    due = reached.max(axis=1, skipna=False).dropna()
    return f1_epoch.assign(time_s=f1_epoch["epoch"].map(due)).dropna(subset=["time_s"])


def run_figure(run_dir: Path) -> Path:
    """F1 over time, and every server's completed rounds over time, for one run."""
    config = inputs.read_config(run_dir)
    f1 = inputs.read_csv(run_dir / schema.F1_TIME)
    # A run folder has rounds.csv; the copies under results/ keep only the small files.
    rounds = inputs.read_optional(run_dir / schema.ROUNDS)
    rounds = pd.DataFrame(columns=["time_s", "server", "round"]) if rounds is None else rounds
    c = run_config(config)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    top.plot(f1["time_s"], f1["f1"], color=s_colour(c["staleness"]), marker=".", lw=1, label="time-wise (f1_time.csv)")
    if len(epochs := epoch_times(inputs.read_optional(run_dir / schema.F1_EPOCH), rounds)):
        top.plot(epochs["time_s"], epochs["f1"], ".", color="grey", ms=3, alpha=0.6, label="round-wise (f1_epoch.csv)")
        top.legend(fontsize=7, loc="lower right")
    top.set_ylim(0, 1)
    top.set_ylabel("f1 score")
    top.grid(alpha=0.3)
    for server, g in rounds.groupby("server"):
        bottom.step(g["time_s"], g["round"], where="post", lw=1, label=f"server-{server}")
    bottom.set_xlabel("time (s)")
    bottom.set_ylabel("completed rounds")
    bottom.grid(alpha=0.3)
    bottom.legend(fontsize=7)
    stopped = f", stopped by its user at {c['duration_s']:g} s" if interrupted(config) else ""
    fig.suptitle(f"{run_dir.name}\n{c['dataset']}, L={c['loss']}, D={c['stdev']:g}, {s_label(c['staleness'])}, "
                 f"speeds {c['speeds']}{stopped}", fontsize=9)
    fig.tight_layout()
    fig.savefig(run_dir / schema.FIGURE, dpi=110)
    plt.close(fig)
    return run_dir / schema.FIGURE


@dataclass
class Args:
    folders: tyro.conf.Positional[tuple[Path, ...]]  # run folders and/or sweep folders
    out: Path | None = None  # where the sweep figures go (default: the first folder)
    per_run: bool = False  # also draw run.png in every run folder of a sweep


def main(args: Args) -> int:
    run_dirs = find_runs(list(args.folders))
    if not run_dirs:
        print(f"{PROG}: no finished run folders (with config.json and f1_time.csv) in {' '.join(map(str, args.folders))}",
              file=sys.stderr)
        return 2
    written = []
    if len(run_dirs) == 1 and (args.folders[0] / schema.CONFIG).exists():
        written.append(run_figure(run_dirs[0]))
    else:
        out = args.out or args.folders[0]
        out.mkdir(parents=True, exist_ok=True)
        # A run its user stopped would pull a configuration's mean down where it ends: its own run.png only.
        stopped = [d for d in run_dirs if interrupted(inputs.read_config(d))]
        for d in stopped:
            print(f"note: {d.name} was stopped by its user: left out of the figures (--per-run draws its run.png)",
                  file=sys.stderr)
        whole = [d for d in run_dirs if d not in stopped]
        if whole:
            written += sweep_figures(load_runs(whole), out)
        if args.per_run:
            written += [run_figure(d) for d in run_dirs]
    for path in written:
        print(path)
    return 0


PROG = "python -m asyncfl.analysis.plot"

if __name__ == "__main__":
    sys.exit(inputs.guarded(main, tyro.cli(Args, prog=PROG, description=__doc__), PROG))
