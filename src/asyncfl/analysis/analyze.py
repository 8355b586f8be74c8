"""Summarise run folders into one row per configuration: how fast, how far and how evenly each trained.

    python -m asyncfl.analysis.analyze sweeps/20261128-001500            # a sweep folder (train_batch.sh)
    python -m asyncfl.analysis.analyze out/L0-D0-S9999-20261127-231630   # or one run folder, or several

Reads only the files a run writes (config.json, f1_time.csv and, if present, yappi.csv). Writes
``summary.csv`` (one row per configuration, repeats aggregated as mean, std, min and max) and
``runs.csv`` (one row per run) into the first folder given (or ``--out``), and prints the table.

Per run:
- final_f1: F1 of the final model; f1_last5: the mean of the last five time-wise scores (less noisy than
  one score of a 2,000-sample subset); f1_auc_frac: area under the F1-over-time curve divided by its
  duration (the mean F1 over the run); time_to_f1_{80,90,95}_s: first evaluation at or above it (NaN: never);
- max_f1_drop: largest fall of F1 between consecutive time-wise evaluations (the paper's "dips");
  dips: how many such falls were 0.1 or more (dips_ge_005, dips_ge_015: 0.05, 0.15); f1_flat_frac: share of consecutive evaluations with the
  same F1 (the model unchanged: the paper's staircase); f1_mean_abs_step: mean |change| between them;
- rounds_mean, rounds_min, rounds_max, rounds_max_min_ratio, rounds_gini: update counts per server and
  how unequal they are (Gini 0 = equal);
- max_staleness: largest round gap seen (at most S + 1);
- gate_wait_frac_mean / _max: share of each server thread's round loop spent waiting at the SSP gate;
- abandoned_rounds: rounds cut by the round timeout or a lost connection, over all servers; timeouts: of
  those, the ones cut by the inactivity timeout (events.csv's silence_s); thread_deaths: server threads
  that ended for good (``--faults original``: any error but a timeout);
- stall_p50_s, stall_p99_s, stall_max_s: the distribution over rounds of rounds.csv's stall_s (the longest
  wait without a byte apart from the server's work; NaN where rounds.csv is not kept);
- retrans_per_round, rtos_per_round, rto_ms_p50, max_backoff_max: the client socket's TCP in the completed
  rounds (rounds.csv): retransmitted segments and retransmission timeouts per round, the median RTO, the
  largest exponential backoff;
- fresh_fail_frac, later_fail_frac: the share of a connection's first rounds that failed (a connection: the
  run's start or a ``reconnected`` event) and of its later rounds (timers K does not scale, such as the
  initial RTO of 1 s, weigh on the first);
- longest_flat_s: the longest stretch of time-wise evaluations with one F1 (the model unchanged), and
  longest_flat_paper_min the same on the paper's clock (times K, in minutes; paper regime only);
- fingerprint: the split's fingerprint digest (one split per sweep: the same in every row);
- cpu_frac_client / _evaluator / _server_max: CPU share of the wall clock; starved: processes that waited
  for a core 5% of the time or more.
Configurations are keyed by regime ('fast' or 'paper K=10'), transport, loss mechanism and TCP congestion
control too, so runs that differ in them are never summarised together.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import tyro

from asyncfl.analysis import inputs
from asyncfl.analysis.inputs import find_runs, interrupted
from asyncfl.core import partitions, rules, schema
from asyncfl.core import regime as regime_mod
from asyncfl.core.conditions import link_label
from asyncfl.core.protocol import TrainConfig
from asyncfl.core.split import DEFAULT_SPLIT_SEED
from asyncfl.process.runlog import stop_reason

THRESHOLDS = (0.80, 0.90, 0.95)
CONFIG_KEYS = ["regime", "transport", "wire", "faults", "loss_mechanism", "tcp_cc", "dataset", "n_servers", "partition", "loss", "link", "stdev", "staleness", "aggregation",
               "speeds", "duration_s", "settings"]
METRICS = ["final_f1", "f1_last5", "f1_auc_frac", *[f"time_to_f1_{int(t * 100)}_s" for t in THRESHOLDS], "max_f1_drop",
           "dips", "dips_ge_005", "dips_ge_015", "f1_flat_frac", "f1_mean_abs_step",
           "rounds_mean", "rounds_min", "rounds_max", "rounds_max_min_ratio", "rounds_gini", "max_staleness",
           "gate_wait_frac_mean", "gate_wait_frac_max", "abandoned_rounds", "timeouts", "thread_deaths", "stall_p50_s", "stall_p99_s",
           "stall_max_s", "retrans_per_round", "rtos_per_round", "rto_ms_p50", "max_backoff_max", "fresh_fail_frac",
           "later_fail_frac", "longest_flat_s",
           "longest_flat_paper_min"]


def gini(values) -> float:
    """Gini coefficient of non-negative values: 0 when all are equal, (n-1)/n when one has everything."""
    x = np.sort(np.asarray(values, dtype=float))
    n, total = len(x), x.sum()
    if n == 0 or total == 0:
        return 0.0
    return float((2 * np.arange(1, n + 1) - n - 1).dot(x) / (n * total))


def time_to_threshold(f1_time: pd.DataFrame, threshold: float) -> float:
    hit = f1_time.loc[f1_time["f1"] >= threshold, "time_s"]
    return float(hit.iloc[0]) if len(hit) else float("nan")


def f1_auc_frac(f1_time: pd.DataFrame) -> float:
    t, f = f1_time["time_s"].to_numpy(float), f1_time["f1"].to_numpy(float)
    if len(t) < 2 or t[-1] <= t[0]:
        return float("nan")
    return float(np.sum((t[1:] - t[:-1]) * (f[1:] + f[:-1]) / 2) / (t[-1] - t[0]))


DIP = 0.1  # a fall of F1 at least this large between consecutive time-wise evaluations is a dip
DIP_STEPS = {"dips_ge_005": 0.05, "dips_ge_015": 0.15}  # the same count one step either side (verdicts.py)


def dips(f1_time: pd.DataFrame, depth: float = DIP) -> int:
    """How many times F1 fell by ``depth`` or more from one time-wise evaluation to the next."""
    f = f1_time["f1"].to_numpy(float)
    return int(np.sum(f[:-1] - f[1:] >= depth))


def flat_frac(f1_time: pd.DataFrame) -> float:
    """Share of consecutive time-wise evaluations with the same F1: the model did not change in between
    (the paper's staircase lines; a fixed test set scores an unchanged model the same)."""
    f = f1_time["f1"].to_numpy(float)
    return float(np.mean(f[1:] == f[:-1])) if len(f) > 1 else float("nan")


def mean_abs_step(f1_time: pd.DataFrame) -> float:
    """Mean |change of F1| between consecutive time-wise evaluations: how 'scribbled' a curve is."""
    f = f1_time["f1"].to_numpy(float)
    return float(np.mean(np.abs(np.diff(f)))) if len(f) > 1 else float("nan")


def max_drop(f1_time: pd.DataFrame) -> float:
    f = f1_time["f1"].to_numpy(float)
    return float(max(0.0, np.max(f[:-1] - f[1:]))) if len(f) > 1 else 0.0


def longest_flat_s(f1_time: pd.DataFrame) -> float:
    """The longest time over which consecutive time-wise evaluations gave one F1 (0: it always moved)."""
    t, f = f1_time["time_s"].to_numpy(float), f1_time["f1"].to_numpy(float)
    longest, start = 0.0, 0
    for i in range(1, len(f) + 1):
        if i == len(f) or f[i] != f[start]:
            longest = max(longest, t[i - 1] - t[start])
            start = i
    return float(longest)


def stall_stats(rounds: pd.DataFrame | None) -> dict[str, float]:
    """Median, p99 and longest of rounds.csv's stall_s (NaN when there is none)."""
    if rounds is None or "stall_s" not in rounds or rounds["stall_s"].dropna().empty:
        return {"stall_p50_s": float("nan"), "stall_p99_s": float("nan"), "stall_max_s": float("nan")}
    x = rounds["stall_s"].dropna().to_numpy(float)
    return {"stall_p50_s": float(np.median(x)), "stall_p99_s": float(np.percentile(x, 99)), "stall_max_s": float(x.max())}


def tcp_stats(rounds: pd.DataFrame | None) -> dict[str, float]:
    """What TCP did in the completed rounds (rounds.csv, client socket): retransmitted segments and
    retransmission timeouts per round, the median RTO, the largest backoff (NaN without those columns)."""
    out = {"retrans_per_round": float("nan"), "rtos_per_round": float("nan"), "rto_ms_p50": float("nan"),
           "max_backoff_max": float("nan")}
    if rounds is None or "retrans_segs" not in rounds or rounds["retrans_segs"].dropna().empty:
        return out
    out["retrans_per_round"] = float(rounds["retrans_segs"].mean())
    out["rtos_per_round"] = float(rounds["rtos"].mean()) if rounds["rtos"].notna().any() else float("nan")
    out["rto_ms_p50"] = float(rounds["rto_ms"].median())
    out["max_backoff_max"] = float(rounds["max_backoff"].max())
    return out


def loss_mechanism_label(config: dict) -> str:
    """How the links' loss was made ('none' without loss); the runs from before silent loss say 'nftables'."""
    found = {info.get("network", {}).get("mechanism", {}).get("loss") for info in config.get("server_info", [])}
    return "+".join(sorted(m for m in found if m)) or "none"


def tcp_cc_label(config: dict) -> str:
    """The congestion control asked for; runs from before --tcp-cc used the machine's default, unrecorded."""
    return config.get("tcp", {}).get("cc") or "default (unrecorded)"


def partition_label(split: dict) -> str:
    """'gaussian' (the study's, whose D is its own column), 'dirichlet(0.5)', 'shards(2)'."""
    return partitions.label(split)


def regime_label(config: dict) -> str:
    """'fast', or 'paper K=10' (runs from before the regimes existed are fast)."""
    k = regime_mod.recorded_time_scale(config)
    return "fast" if k is None else f"paper K={k:g}"


# Client settings that change what is trained or measured, beyond the other keys, with the study's values
# (each regime's own for the [regime] ones): a run that departs from them is named by its departures.
TRAIN_DEFAULTS = {"batch_size": TrainConfig.batch_size, "batches_per_round": TrainConfig.max_nr_batches,
                  "lr": TrainConfig.lr, "shuffle": TrainConfig.shuffle, "server_timeout_s": 0.0}
MEASURED = ("eval_samples", "eval_interval_s", "eval_every_rounds", "round_timeout_s", "timeout_on")


def settings_label(config: dict) -> str:
    """'' for the study's settings, else the ones a run changed ('lr=0.05 eval_samples=500'), so runs that
    differ in any of them are separate configurations. Settings an older run did not record count as
    the study's; so does the split seed it does not name."""
    args, r = config.get("args", {}), config.get("regime", {"name": "fast"})
    expected = {**TRAIN_DEFAULTS, **{k: v for k, v in regime_mod.client_defaults(
        r.get("name", "fast"), r.get("time_scale", regime_mod.DEFAULT_TIME_SCALE)).items() if k in MEASURED}}
    changed = [f"{k}={args[k]:g}" if isinstance(args[k], float) else f"{k}={args[k]}"
               for k, v in expected.items() if k in args and args[k] is not None and args[k] != v]
    seed = config.get("dataset", {}).get("split_seed")
    if seed is not None and seed != DEFAULT_SPLIT_SEED:
        changed.append(f"split_seed={seed}")
    spread = r.get("pace_spread")  # the servers' (a server flag), as they reported their paces
    if regime_mod.recorded_time_scale({"regime": r}) is not None and spread is not None and abs(spread - regime_mod.PACE_SPREAD) > 1e-6:
        changed.append(f"pace_spread={spread:g}")
    return " ".join(changed)


def transport_label(config: dict) -> str:
    """How the weights travelled: 'netns websocket', 'loopback shared memory', ... (older runs: from
    weights_via and the servers' namespaces)."""
    if "transport" in config:
        return config["transport"]["kind"]
    nets = {"netns" if info.get("network", {}).get("netns") else "loopback" for info in config.get("server_info", [])}
    return "+".join(sorted(nets)) + " " + "+".join(sorted(set(config.get("weights_via", ["websocket"]))))


def wire_label(config: dict) -> tuple[str, str]:
    """(wire, faults): how a round crossed the link and what a failure did; runs from before both: 'modern'."""
    args = config.get("args", {})
    return args.get("wire", "modern"), args.get("faults", "modern")


def run_config(config: dict) -> dict:
    """The configuration a run belongs to (what its repeats share), from its config.json."""
    infos = config.get("server_info", [])
    losses = [info.get("network", {}).get("loss_pct", 0) for info in infos]
    speeds = [info.get("speed_ratio", 1) for info in infos]
    split = config.get("dataset", {})
    return {
        "regime": regime_label(config),
        "transport": transport_label(config),
        "wire": wire_label(config)[0],
        "faults": wire_label(config)[1],
        "loss_mechanism": loss_mechanism_label(config),
        "tcp_cc": tcp_cc_label(config),
        "dataset": split.get("dataset", config["args"].get("dataset")),
        "n_servers": config.get("n_servers", len(infos)),
        # One number when every link is the same (the paper's L), else the per-server list.
        "loss": f"{losses[0]:g}%" if len(set(losses)) <= 1 and losses else " ".join(f"{v:g}" for v in losses),
        "link": link_label([info.get("network", {}) for info in infos]),
        "partition": partition_label(split),
        "stdev": split.get("stdev"),
        "staleness": config.get("staleness_threshold", config["args"]["staleness_threshold"]),
        "aggregation": rules.label(config.get("aggregation", {})),
        "speeds": " ".join(f"{v:g}" for v in speeds),
        # A run the user stopped is its own configuration: the time it trained, not the time it was given.
        "duration_s": config["finished"].get("training_s") if interrupted(config) else config["args"]["duration_s"],
        "settings": settings_label(config),
    }


def connection_stats(events: pd.DataFrame | None, rounds: pd.DataFrame | None) -> dict:
    """How often a connection's first round failed against any later round: per server, a connection
    starts at the run's start and at each ``reconnected``; its rounds are rounds.csv's (done) and the
    ``round_abandoned`` events (failed), taken in time order. fresh_fail_frac: failed first rounds /
    connections that tried one; later_fail_frac: the other failures / the other rounds."""
    if events is None or rounds is None:
        return {"fresh_fail_frac": float("nan"), "later_fail_frac": float("nan")}
    ev = events[events["event"].isin(["round_abandoned", "reconnected"])]
    timeline = pd.concat([pd.DataFrame({"time_s": rounds["time_s"], "server": rounds["server"].astype(str),
                                        "what": "done"}),
                          pd.DataFrame({"time_s": ev["time_s"], "server": ev["server"].astype(str),
                                        "what": ev["event"].map({"round_abandoned": "failed",
                                                                  "reconnected": "connected"})})])
    tried, failed = {"fresh": 0, "later": 0}, {"fresh": 0, "later": 0}
    for _, whats in timeline.sort_values("time_s", kind="stable").groupby("server")["what"]:
        kind = "fresh"
        for what in whats:
            if what == "connected":
                kind = "fresh"
                continue
            tried[kind] += 1
            failed[kind] += what == "failed"
            kind = "later"
    return {f"{kind}_fail_frac": failed[kind] / tried[kind] if tried[kind] else float("nan") for kind in tried}


def analyze_run(run_dir: Path) -> dict:
    config = inputs.read_config(run_dir)
    f1_time = inputs.read_csv(run_dir / schema.F1_TIME)
    if not isinstance(config.get("args"), dict):
        raise inputs.InputError(f"{run_dir / schema.CONFIG}: not a run's config.json (no \"args\")")
    if not isinstance(config.get("finished"), dict) or "rounds_per_server" not in config["finished"]:
        raise inputs.InputError(f"{run_dir / schema.CONFIG}: no \"finished\" record (the run is still going, or was killed)")
    n_servers = config.get("n_servers", 1)
    # Rounds per server and the largest staleness are in config.json (older results/ keep no rounds.csv).
    per_server = pd.Series(config["finished"]["rounds_per_server"], dtype=float).reindex(range(n_servers), fill_value=0)
    row = {"run": run_dir.name, "seed": config["args"].get("seed"), **run_config(config),
           "stop_reason": stop_reason(config["finished"])}
    row["final_f1"] = float(f1_time["f1"].iloc[-1]) if len(f1_time) else float("nan")
    row["f1_auc_frac"] = f1_auc_frac(f1_time)
    for t in THRESHOLDS:
        row[f"time_to_f1_{int(t * 100)}_s"] = time_to_threshold(f1_time, t)
    row["max_f1_drop"] = max_drop(f1_time)
    # The final model's score comes at the end of training, off the interval grid: left out of these.
    grid = f1_time.iloc[:-1] if len(f1_time) > 2 else f1_time
    row["dips"], row["f1_flat_frac"], row["f1_mean_abs_step"] = dips(grid), flat_frac(grid), mean_abs_step(grid)
    row.update({column: dips(grid, depth) for column, depth in DIP_STEPS.items()})
    row["f1_last5"] = float(grid["f1"].iloc[-5:].mean()) if len(grid) else float("nan")
    row["rounds_mean"] = float(per_server.mean())
    row["rounds_min"], row["rounds_max"] = int(per_server.min()), int(per_server.max())
    row["rounds_max_min_ratio"] = float(per_server.max() / per_server.min()) if per_server.min() > 0 else float("inf")
    row["rounds_gini"] = gini(per_server)
    row["max_staleness"] = int(max(config["finished"]["max_staleness_per_server"], default=0))
    finished = config["finished"]
    row["abandoned_rounds"] = int(sum(finished.get("retries_per_server", [])))
    events = inputs.read_optional(run_dir / schema.EVENTS)
    row["timeouts"] = int(events["silence_s"].notna().sum()) if events is not None and "silence_s" in events \
        else float("nan")
    row["thread_deaths"] = int((events["event"] == "thread_ended").sum()) if events is not None else float("nan")
    rounds = inputs.read_optional(run_dir / schema.ROUNDS)
    row.update(stall_stats(rounds))
    row.update(tcp_stats(rounds))
    row.update(connection_stats(events, rounds))
    row["longest_flat_s"] = longest_flat_s(grid)
    k = regime_mod.recorded_time_scale(config)
    row["longest_flat_paper_min"] = float("nan") if k is None else row["longest_flat_s"] * k / 60
    row["fingerprint"] = config.get("dataset", {}).get("fingerprint_digest", "")
    shares = finished.get("cpu", {})
    row["cpu_frac_client"] = shares.get("client", {}).get("cpu_frac", float("nan"))
    row["cpu_frac_evaluator"] = shares.get("evaluator", {}).get("cpu_frac", float("nan"))
    server_fracs = [v["cpu_frac"] for k, v in shares.items() if k.startswith("server-")]
    row["cpu_frac_server_max"] = max(server_fracs) if server_fracs else float("nan")
    row["starved"] = " ".join(finished.get("starved", []))
    row["cut_rows"] = sum(t.attrs["cut_rows"] for t in (f1_time, events, rounds) if t is not None)
    yappi_path = run_dir / schema.YAPPI
    if yappi_path.exists():
        gate = inputs.read_csv(yappi_path)["gate_frac"]
        row["gate_wait_frac_mean"], row["gate_wait_frac_max"] = float(gate.mean()), float(gate.max())
    else:
        row["gate_wait_frac_mean"] = row["gate_wait_frac_max"] = float("nan")
    return row


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: repeats counted, each metric as mean, std, min and max."""
    grouped = runs.groupby(CONFIG_KEYS, dropna=False, sort=True)
    summary = grouped[METRICS].agg(["mean", "std", "min", "max"])
    summary.columns = [f"{metric}_{stat}" for metric, stat in summary.columns]
    summary.insert(0, "repeats", grouped.size())
    return summary.reset_index()


@dataclass
class Args:
    folders: tyro.conf.Positional[tuple[Path, ...]]  # run folders and/or sweep folders
    out: Path | None = None  # where to write summary.csv and runs.csv (default: the first folder)
    interrupted: bool = True  # include runs their user stopped (each its own configuration, at the time it trained); --no-interrupted leaves them out


def main(args: Args) -> int:
    run_dirs = find_runs(list(args.folders), args.interrupted)
    if not run_dirs:
        print(f"{PROG}: no finished run folders (with config.json and f1_time.csv) in {' '.join(map(str, args.folders))}",
              file=sys.stderr)
        return 2
    runs = pd.DataFrame([analyze_run(d) for d in run_dirs])
    for _, r in runs[runs["cut_rows"] > 0].iterrows():
        print(f"note: {r['run']}: {r['cut_rows']} cut last row(s) dropped (the run was killed mid-write)", file=sys.stderr)
    for _, r in runs[runs["stop_reason"] == "interrupted"].iterrows():
        print(f"note: {r['run']}: stopped by its user after {r['duration_s']:g} s (its own configuration)", file=sys.stderr)
    summary = summarize(runs)
    out = args.out or args.folders[0]
    out.mkdir(parents=True, exist_ok=True)
    runs.to_csv(out / schema.RUNS, index=False)
    summary.to_csv(out / schema.SUMMARY, index=False)
    # Runs of different regimes or transports are never one configuration: say so when both are present.
    for column in ("regime", "transport"):
        if runs[column].nunique() > 1:
            print(f"note: these runs differ in {column} ({', '.join(sorted(runs[column].unique()))}); each summary "
                  f"row holds one {column}: compare rows of the same {column} only", file=sys.stderr)
    # The rule and split columns only when the runs differ in them (the study's sweeps keep their table).
    varying = [c for c in ("regime", "transport", "partition", "aggregation", "duration_s") if summary[c].nunique() > 1]
    shown = ["loss", "stdev", *varying, "staleness", "speeds", "repeats", "final_f1_mean", "final_f1_std", "f1_auc_frac_mean",
             "time_to_f1_90_s_mean", "max_f1_drop_mean", "rounds_mean_mean", "rounds_gini_mean", "max_staleness_max",
             "gate_wait_frac_mean_mean"]
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.max_rows", 500):
        print(summary[shown].round(3).to_string(index=False))
        print("\nstalls per run (rounds.csv's stall_s: median, p99, longest) and the longest flat F1:")
        print(runs[["run", "abandoned_rounds", "timeouts", "thread_deaths", "stall_p50_s", "stall_p99_s", "stall_max_s", "longest_flat_s",
                    "longest_flat_paper_min"]].round(3).to_string(index=False))
    print(f"\n{len(runs)} runs, {len(summary)} configurations -> {out / schema.SUMMARY}, {out / schema.RUNS}")
    return 0


PROG = "python -m asyncfl.analysis.analyze"

if __name__ == "__main__":
    sys.exit(inputs.guarded(main, tyro.cli(Args, prog=PROG, description=__doc__), PROG))
