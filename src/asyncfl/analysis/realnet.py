"""Asynchronous rules on real links (issue 27): each rule's wall-clock time to an F1 against strict FedAvg's,
beside what the simulators' published figures say and what a simulator's formula (analysis/twin.py) says
for the same runs.

    python -m asyncfl.analysis.realnet results/rules-real-net        # after collect (and twin on every run)

Reads ``DIR/runs/<run>/`` (config.json, f1_time.csv, rounds.csv, and twin-formula/ and twin-replay/ where
made). Writes ``DIR/realnet_runs.csv`` (one row per run: times to F1 0.80 and 0.90, real and both twins',
and the updates, bytes and retransmissions it took), ``DIR/realnet.md`` (the tables) and prints them.
A run that never reached a threshold counts as reaching it at its end: a ratio built on it is a bound
(marked >, or <).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import tyro

from asyncfl.analysis import inputs, markdown
from asyncfl.analysis.analyze import partition_label
from asyncfl.core import rules, schema
from asyncfl.core.model import weight_spec
from asyncfl.process.runlog import stop_reason

THRESHOLDS = (0.80, 0.90)
SOURCES = ("real", "formula", "replay")
# The simulators' published speed-ups over synchronous FedAvg (time to a target accuracy), as issue 27 quotes
# them: FedBuff's paper (Nguyen et al., AISTATS 2022, FLSim, half-normal client durations) and FedScale's
# FedBuff example (its virtual clock).
PUBLISHED = {"fedbuff": "3.3x (FedBuff paper, FLSim); 1.46x (FedScale example)",
             "fedasync": "FedBuff 2.5x faster than FedAsync (FedBuff paper)"}


def rule_label(config: dict) -> str:
    record = config.get("aggregation", {"aggregation": "ssp"})
    if record["aggregation"] == "ssp":
        s = config["staleness_threshold"]
        return f"ssp S={'inf' if s >= 9999 else s}"
    return rules.label(record)


def link_setting(config: dict) -> str:
    nets = [info.get("network", {}) for info in config["server_info"]]
    if not any(n.get("loss_pct") or n.get("rate_mbit") or n.get("delay_ms") for n in nets):
        return "speeds"
    loss = " ".join(f"{n.get('loss_pct', 0):g}" for n in nets)
    rate = " ".join(f"{n.get('rate_mbit', 0):g}" for n in nets)
    return f"speeds + loss {loss} % + rate {rate} Mbit/s"


def link_label(link: str) -> str:
    """A table's name for link_setting's value: the runs without or with loss and rate limits."""
    return "speeds only" if link == "speeds" else "speeds + loss + rate"


def first_time(f1: pd.DataFrame, threshold: float) -> float:
    hit = f1[f1["f1"] >= threshold]
    return float(hit["time_s"].iloc[0]) if len(hit) else float("nan")


def run_row(run: Path) -> dict:
    config = inputs.read_config(run)
    duration = float(config["args"]["duration_s"])
    weights_bytes = sum(int(np.prod(shape)) for shape, _ in weight_spec(config["args"]["dataset"]).values()) * 4
    rounds = inputs.read_csv(run / schema.ROUNDS)
    row = {"run": run.name, "seed": config["args"]["seed"], "partition": partition_label(config["dataset"]),
           "link": link_setting(config), "rule": rule_label(config), "n_servers": config["n_servers"],
           "duration_s": duration, "speeds": " ".join(f"{i.get('speed_ratio', 1):g}" for i in config["server_info"]),
           "updates": len(rounds), "abandoned_rounds": sum(config["finished"].get("retries_per_server", [])),
           "diverged": stop_reason(config["finished"]) == "diverged", "training_s": config["finished"].get("training_s"),
           "starved": " ".join(config["finished"].get("starved", []))}
    for source in SOURCES:
        folder = run if source == "real" else run / f"twin-{source}"
        f1 = inputs.read_csv(folder / schema.F1_TIME) if (folder / schema.F1_TIME).is_file() else None
        row[f"{source}_made"] = f1 is not None  # a twin not made yet is missing, not a run that never got there
        for t in THRESHOLDS:
            row[f"{source}_t{round(t * 100)}_s"] = first_time(f1, t) if f1 is not None else float("nan")
    for t in THRESHOLDS:
        until = row[f"real_t{round(t * 100)}_s"]
        upto = rounds[rounds["time_s"] <= (until if not np.isnan(until) else duration)]
        row[f"updates_to_{round(t * 100)}"] = len(upto)
        row[f"mb_to_{round(t * 100)}"] = round(len(upto) * 2 * weights_bytes / 1e6, 2)  # the model each way a round
        row[f"retrans_to_{round(t * 100)}"] = int(pd.to_numeric(upto.get("retrans_segs"), errors="coerce").fillna(0).sum())
    for owner in range(config["n_servers"]):  # what its link did to each owner (owners_table)
        mine = rounds[rounds["server"] == owner]
        times = np.concatenate([[0.0], np.sort(mine["time_s"].to_numpy(float)), [duration]])
        retrans = pd.to_numeric(mine.get("retrans_segs"), errors="coerce").fillna(0)
        row[f"owner{owner}_rounds"] = len(mine)
        row[f"owner{owner}_longest_gap_s"] = float(np.diff(times).max())
        row[f"owner{owner}_retrans_per_round"] = float(retrans.mean()) if len(mine) else 0.0
    formula = run / "twin-formula" / schema.ROUNDS  # results combined in the run's time, on the formula's clock
    row["formula_results"] = int((inputs.read_csv(formula)["time_s"] <= duration).sum()) if formula.is_file() else np.nan
    replay = run / "twin-replay" / schema.ROUNDS
    if replay.is_file() and "applied_s" in rounds:
        mine = inputs.read_csv(replay)
        real = rounds.sort_values("applied_s")
        row["replay_same_order"] = list(zip(mine["server"], mine["round"])) == list(zip(real["server"], real["round"]))
    return row


def load(results: Path) -> pd.DataFrame:
    runs = sorted(p for p in (results / "runs").iterdir() if (p / schema.CONFIG).is_file())
    return pd.DataFrame([run_row(r) for r in runs])


def speedups(runs: pd.DataFrame, source: str, t: int, against: str = "fedavg") -> pd.DataFrame:
    """Per run: the time to F1 of the rule ``against`` (its label's name) over the rule's, paired by
    partition, link and seed (> 1: faster); the paired rule's columns end in ``_base``."""
    col = f"{source}_t{t}_s"
    made = runs[runs[f"{source}_made"]]
    times = made.assign(time=made[col].fillna(made["duration_s"]), censored=made[col].isna())
    base = times[times["rule"].str.split("(").str[0] == against][["partition", "link", "seed", "time", "censored"]]
    paired = times.merge(base, on=["partition", "link", "seed"], suffixes=("", "_base"))
    return paired.assign(speedup=paired["time_base"] / paired["time"])


def bound(values: pd.DataFrame) -> str:
    """The median speed-up over seeds, marked as a bound where a censored time went into it."""
    if values.empty:
        return "-"
    med = float(values["speedup"].median())
    lower = values["censored_base"].any() and not values["censored"].any()
    upper = values["censored"].any() and not values["censored_base"].any()
    if values["censored"].all() and values["censored_base"].all():
        return "neither reached"
    return f"{'>' if lower else '<' if upper else ''}{med:.2f}x ({values['speedup'].min():.2f}-{values['speedup'].max():.2f})"


def ratio_table(runs: pd.DataFrame, partition: str) -> str:
    links = sorted(runs["link"].unique(), key=len)
    head = [f"{link_label(link)}, F1 {t / 100:.2f}: real (formula twin)"
            for link in links for t in (80, 90)]
    rows = []
    tables = {(s, t): speedups(runs[runs["partition"] == partition], s, t) for s in ("real", "formula") for t in (80, 90)}
    for rule in sorted(runs["rule"].unique(), key=lambda r: (r != "fedavg", r)):
        cells = []
        for link in links:
            for t in (80, 90):
                pick = [tables[(s, t)][(tables[(s, t)]["rule"] == rule) & (tables[(s, t)]["link"] == link)]
                        for s in ("real", "formula")]
                cells.append(f"{bound(pick[0])} ({bound(pick[1])})")
        rows.append([rule, *cells, PUBLISHED.get(rule.split("(")[0], "-")])
    return markdown.table(["rule", *head, "published"], rows)


def fedbuff_table(runs: pd.DataFrame) -> str:
    """FedBuff against FedAsync, as FedBuff's paper compares them (2.5x): FedAsync's time to F1 over each
    FedBuff's, paired by seed, real (formula twin)."""
    rows = []
    tables = {(s, t): speedups(runs, s, t, against="fedasync") for s in ("real", "formula") for t in (80, 90)}
    for (part, link, rule), _ in runs[runs["rule"].str.startswith("fedbuff")].groupby(["partition", "link", "rule"]):
        cells = []
        for t in (80, 90):
            pick = [tables[(s, t)] for s in ("real", "formula")]
            pick = [p[(p["partition"] == part) & (p["link"] == link) & (p["rule"] == rule)] for p in pick]
            cells.append(f"{bound(pick[0])} ({bound(pick[1])})")
        rows.append([part, link_label(link), rule, *cells])
    return markdown.table(["partition", "link", "rule", "F1 0.80: real (formula twin)", "F1 0.90"], rows)


def twin_error_table(runs: pd.DataFrame) -> str:
    """The formula twin's error in time to F1 (formula / real - 1), per rule and link setting."""
    rows = []
    for (part, link, rule), g in runs.groupby(["partition", "link", "rule"]):
        cells = []
        for t in (80, 90):
            both = g.dropna(subset=[f"real_t{t}_s", f"formula_t{t}_s"])
            err = both[f"formula_t{t}_s"] / both[f"real_t{t}_s"] - 1
            cells.append(f"{err.median():+.0%} ({len(both)} of {len(g)} runs)" if len(both) else f"- (0 of {len(g)})")
        results = (g["formula_results"] / g["updates"]).dropna()
        cells.append(f"{results.median():.2f} ({results.min():.2f}-{results.max():.2f})" if len(results) else "-")
        same = g["replay_same_order"].dropna() if "replay_same_order" in g else pd.Series([], dtype=bool)
        rows.append([part, link_label(link), rule, *cells, f"{int(same.sum())} of {len(same)}"])
    return markdown.table(["partition", "link", "rule", "F1 0.80: formula / real − 1", "F1 0.90",
                           "results in the run: formula / real", "replay in the real order"], rows)


def ranking_table(runs: pd.DataFrame) -> str:
    """The rules ordered by median time to each F1 (censored at the run's end), real against the formula twin."""
    from scipy.stats import kendalltau

    rows = []
    for (part, link), g in runs[runs["formula_made"]].groupby(["partition", "link"]):
        for t in (80, 90):
            med = {s: g.assign(t=g[f"{s}_t{t}_s"].fillna(g["duration_s"])).groupby("rule")["t"].median()
                   for s in ("real", "formula")}
            order = {s: " < ".join(f"{rule} ({v:.0f} s)" for rule, v in med[s].sort_values(kind="stable").items())
                     for s in med}
            tau = kendalltau(med["real"], med["formula"].reindex(med["real"].index)).statistic
            rows.append([part, link_label(link), f"{t / 100:.2f}", order["real"], order["formula"], f"{tau:+.2f}"])
    return markdown.table(["partition", "link", "F1", "real order (fastest first)", "formula twin's order",
                           "Kendall tau"], rows)


def figure(results: Path, runs: pd.DataFrame, partition: str, seed: int = 0) -> Path:
    """F1 over time of one repeat, real (solid) against the formula twin (dashed), one panel per link setting."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pick = runs[(runs["partition"] == partition) & (runs["seed"] == seed)]
    links = sorted(pick["link"].unique(), key=len)
    fig, axes = plt.subplots(1, len(links), figsize=(6.5 * len(links), 4.2), sharey=True, squeeze=False)
    for ax, link in zip(axes[0], links):
        for k, row in enumerate(pick[pick["link"] == link].sort_values("rule").itertuples()):
            color = f"C{k}"
            for source, style in (("", "-"), ("twin-formula", "--")):
                path = results / "runs" / row.run / source / schema.F1_TIME
                if path.is_file():
                    f1 = inputs.read_csv(path)
                    ax.plot(f1["time_s"], f1["f1"], style, color=color, lw=1.2,
                            label=row.rule if not source else None)
        ax.set_title(f"{link_label(link)} ({partition}, seed {seed})",
                     fontsize=9)
        ax.set_xlabel("wall-clock time, s (dashed: the formula twin's virtual clock)")
        ax.axhline(0.9, color="grey", lw=0.5)
    axes[0][0].set_ylabel("F1")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    out = results / f"realnet_{partition.replace('(', '_').replace(')', '')}.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def cost_table(runs: pd.DataFrame) -> str:
    """What reaching each F1 took, per rule: updates applied, megabytes on the wire (the model each way an
    update) and retransmitted segments, medians over seeds; a run that never got there counts to its end.
    A run whose model diverged (process/runlog.py's stop_reason) says when: its F1 ends there."""
    rows = []
    for (part, link, rule), g in runs.groupby(["partition", "link", "rule"]):
        cells = [f"{g[f'updates_to_{t}'].median():.0f}, {g[f'mb_to_{t}'].median():.0f}, "
                 f"{g[f'retrans_to_{t}'].median():.0f}" for t in (80, 90)]
        rows.append([part, link_label(link), rule, *cells, f"{int(g['real_t90_s'].notna().sum())} of {len(g)}",
                     ", ".join(f"at {t:.0f} s" for t in g.loc[g["diverged"], "training_s"]) or "-"])
    return markdown.table(["partition", "link", "rule", "F1 0.80: updates, MB, retransmissions", "F1 0.90",
                           "reached 0.90", "diverged"], rows)


def owners_table(results: Path, runs: pd.DataFrame) -> str:
    """What each owner's link did to it, per rule (means over the runs with links of run_row's owner columns):
    rounds, the longest time between two of its updates (from the run's start, its first), and
    retransmitted segments per round."""
    head = ["rule", *(f"owner {i}" for i in range(int(runs["n_servers"].max())))]
    lossy = runs[runs["link"] != "speeds"]
    if lossy.empty:
        return "no run with lossy or rate-limited links"
    links = json.loads((results / "runs" / lossy["run"].iloc[0] / schema.CONFIG).read_text())["server_info"]
    rows = [["(loss %, rate Mbit/s)", *(f"{i['network'].get('loss_pct', 0):g}, {i['network'].get('rate_mbit', 0) or '-'}"
                                       for i in links)]]
    for rule, g in lossy.groupby("rule"):
        rows.append([rule, *(f"{g[f'owner{i}_rounds'].mean():.0f} rounds, longest gap {g[f'owner{i}_longest_gap_s'].mean():.1f} s, "
                             f"{g[f'owner{i}_retrans_per_round'].mean():.1f} retr./round" for i in range(len(links)))])
    return markdown.table(head, rows)


@dataclass
class Args:
    results: tyro.conf.Positional[Path]  # a collected grid: DIR/runs/<run>/ (e.g. results/rules-real-net)
    figures: bool = True  # realnet_<partition>.png: F1 over time of seed 0, real and formula twin


def main(args: Args) -> int:
    if not (args.results / "runs").is_dir():
        print(f"realnet: no runs/ in {args.results} (collect the sweep first)", file=sys.stderr)
        return 2
    runs = load(args.results)
    runs.to_csv(args.results / "realnet_runs.csv", index=False)
    parts = []
    for partition in sorted(runs["partition"].unique()):
        parts += [f"## Speed-up over strict FedAvg, {partition} (median over seeds, range)", ratio_table(runs, partition)]
    parts += ["## FedBuff against FedAsync (median over seeds, range; published: FedBuff up to 2.5x faster)",
              fedbuff_table(runs)]
    parts += ["## What reaching F1 took (medians over seeds)", cost_table(runs)]
    parts += ["## What the links did to each owner (runs with loss and rate limits)", owners_table(args.results, runs),
              "## The formula twin's error in time to F1", twin_error_table(runs),
              "## The rules' ranking, real and formula", ranking_table(runs)]
    text = "\n\n".join(parts)
    (args.results / "realnet.md").write_text(text + "\n")
    print(text)
    if args.figures:
        for partition in sorted(runs["partition"].unique()):
            figure(args.results, runs, partition)
    return 0


PROG = "python -m asyncfl.analysis.realnet"

if __name__ == "__main__":
    sys.exit(inputs.guarded(main, tyro.cli(Args, prog=PROG, description=__doc__), PROG))
