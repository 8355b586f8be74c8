"""The simulated twin of a real run: the same rule, split, seeds and model, trained in one process on a
virtual clock (core/virtualclock.py), so that what differs from the real run is how time is modelled.

    python -m asyncfl.analysis.twin out/RUN                    # both modes
    python -m asyncfl.analysis.twin out/RUN --mode replay      # one

``formula``: each round lasts what a simulator's usual model says (FLSim, FedScale, Plato): compute = the
server's speed ratio x a round's compute at speed 1 (its --compute-s, or the run's median measured
compute if longer), transfer = the model's bytes each way / the link's rate (an unlimited link at
``--free-rate-mbit``) plus the link's delay each way, and loss as a mean slowdown of the transfer,
1 / (1 - L). ``replay``: each round lasts what it lasted in the real run (rounds.csv: snapshot to update,
``start_s`` to ``applied_s``), and each server's time between the gate's release and its snapshot is the
real one too; the gate, the rule and the training are the twin's own, so a replay that does not put the
updates in the real run's order would show a difference in the code, not in the network.

Writes ``RUN/twin-<mode>/``: config.json (the twin's settings and the run it twins), f1_time.csv (virtual
clock), rounds.csv (time_s, server, round, staleness, updates_behind, loss, start_s) and model.safetensors.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
import tyro

from asyncfl.analysis import inputs
from asyncfl.core import data, rules, schema, virtualclock
from asyncfl.core.model import flatten, initial_weights
from asyncfl.core.protocol import TrainConfig
from asyncfl.core.split import SplitSettings, make_split
from asyncfl.core.state import TrainingState, may_start
from asyncfl.core.task import Scorer, ShardTrainer
from asyncfl.core.virtualclock import Timing
from asyncfl.process.runlog import CsvLog

BYTES_PER_WEIGHT = 4  # float32 on every wire


@dataclass
class Args:
    run: tyro.conf.Positional[Path]  # a real run's folder (config.json, rounds.csv with start_s and applied_s)
    mode: Literal["both", "formula", "replay"] = "both"  # which twin(s) to make
    free_rate_mbit: float = 10000.0  # formula: the rate of a link without a limit (a veth's nominal 10 Gbit/s), Mbit/s
    data_dir: str = "data"  # where downloaded datasets are stored


def split_settings(record: dict) -> SplitSettings:
    """The split config.json records, as the settings that make it again (its size check off)."""
    keep = {k: record[k] for k in ("n_servers", "partition", "stdev", "stdev_units", "split_seed", "alpha_dirichlet",
                                    "shards_per_server") if k in record}
    return SplitSettings(**keep, min_shard_samples=0)


def build(config: dict, data_dir: str) -> tuple[TrainingState, list[ShardTrainer], TrainConfig, Scorer]:
    """The run's global model, rule and gate, and its data owners' trainers, as the real processes made them."""
    args, record = config["args"], config["dataset"]
    ds = data.load(record["dataset"], data_dir)
    shards, split = make_split(split_settings(record), ds.train_labels, ds.n_classes, ds.name, ds.source)
    if split["fingerprint_digest"] != record["fingerprint_digest"]:
        raise ValueError(f"the split made again differs from the run's ({split['fingerprint_digest']} vs "
                         f"{record['fingerprint_digest']})")
    n = config["n_servers"]
    rule_record = config.get("aggregation", {"aggregation": "ssp"})
    cls = rules.get(rule_record["aggregation"])
    rule = cls(n, cls.Options(**{k: v for k, v in rule_record.items() if k != "aggregation"}))
    state = TrainingState(flatten(initial_weights(args["seed"], ds.name)), n, config["staleness_threshold"], rule)
    trainers = [ShardTrainer(f"server-{i}", ds.name, data.to_tensor(ds.train_images[shard], ds.name),
                             torch.from_numpy(ds.train_labels[shard]), seed=args["seed"] * 1000 + i)
                for i, shard in enumerate(shards)]
    return state, trainers, TrainConfig.from_dict(config["train_config"]), Scorer(ds, args.get("eval_samples") or 0)


def real_rounds(run: Path) -> pd.DataFrame:
    rounds = inputs.read_csv(run / schema.ROUNDS)
    if "applied_s" not in rounds or rounds["applied_s"].isna().any():
        raise ValueError(f"{run / schema.ROUNDS} has no start_s/applied_s (a run from before the twin): run it again")
    return rounds.sort_values("applied_s", kind="stable").reset_index(drop=True)


def replay_timings(rounds: pd.DataFrame, n: int, staleness: int) -> dict[tuple[int, int], Timing]:
    """Each real round's duration (snapshot to update) and gap (the gate's release to the snapshot), the
    release found by running the gate over the real updates in their order."""
    completed = [0] * n
    opened = {(i, 1): 0.0 for i in range(n)}  # (server, round) -> when the gate let it start
    for row in rounds.itertuples():
        completed[row.server] += 1
        for i in range(n):  # what this update opened: the server's own next round, or others' on a new minimum
            if (i, completed[i] + 1) not in opened and may_start(completed, i, staleness):
                opened[(i, completed[i] + 1)] = row.applied_s
    return {(row.server, row.round): Timing(row.applied_s - row.start_s,
                                            max(0.0, row.start_s - opened.get((row.server, row.round), row.start_s)))
            for row in rounds.itertuples()}


def formula_timings(config: dict, rounds: pd.DataFrame, weights_bytes: int, free_rate_mbit: float):
    """A simulator's round: ratio x compute at speed 1, plus bytes / rate and the delay each way, the transfer
    slowed by 1 / (1 - L)."""
    compute_1 = float(rounds["compute_s"].median())  # this machine's training of one round
    per_server = []
    for info in config["server_info"]:  # a server's round lasts ratio x max(compute, its --compute-s): ShardTrainer
        net = info.get("network", {})
        rate = (net.get("rate_mbit") or free_rate_mbit) * 1e6 / 8  # bytes per second
        transfer = 2 * weights_bytes / rate / (1 - net.get("loss_pct", 0.0) / 100) + 2 * net.get("delay_ms", 0.0) / 1e3
        per_server.append(info.get("speed_ratio", 1.0) * max(compute_1, info.get("pace_s") or 0.0) + transfer)
    return (lambda server, rnd: Timing(per_server[server])), {"compute_s_measured": compute_1, "round_s": per_server}


def make_twin(run: Path, mode: str, free_rate_mbit: float, data_dir: str) -> Path:
    config = inputs.read_config(run)
    torch.set_num_threads(1)  # the servers' and client's setting: the same floating-point sums
    state, trainers, train_config, scorer = build(config, data_dir)
    rounds = real_rounds(run)
    n = config["n_servers"]
    weights_bytes = sum(v.numel() for v in state.snapshot().weights.values()) * BYTES_PER_WEIGHT
    if mode == "replay":
        table = replay_timings(rounds, n, config["staleness_threshold"])
        timing, model = (lambda server, rnd: table.get((server, rnd))), {"rounds_replayed": len(table)}
    else:
        timing, model = formula_timings(config, rounds, weights_bytes, free_rate_mbit)
    out = run / f"twin-{mode}"
    out.mkdir(exist_ok=True)
    duration = float(config["finished"]["training_s"]) if mode == "replay" else float(config["args"]["duration_s"])
    interval = float(config["args"]["eval_interval_s"])
    record = {"twin_of": str(run), "mode": mode, "duration_s": duration, "eval_interval_s": interval,
              "weights_bytes": weights_bytes, "free_rate_mbit": free_rate_mbit, "model": model,
              "aggregation": config.get("aggregation"), "staleness_threshold": config["staleness_threshold"],
              "n_servers": n, "dataset": config["dataset"]["dataset"], "started_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    f1_log, rounds_log = CsvLog(out / schema.F1_TIME, schema.F1_TIME_HEADER), CsvLog(out / schema.ROUNDS, schema.TWIN_ROUNDS_HEADER)
    t0 = time.perf_counter()
    applied = virtualclock.run(
        state, lambda i, w: trainers[i].fit(trainers[i].dataset_key, train_config, w), timing, duration,
        list(np.arange(0.0, float(config["args"]["duration_s"]), interval)),  # as eval_timer: k x interval < duration
        lambda t, w: f1_log.write(round(float(t), 4), round(scorer.f1(w), 4)),
        lambda u: rounds_log.write(f"{u.time_s:.6f}", u.server, u.round, u.staleness, u.updates_behind,
                                   round(u.loss, 5), f"{u.start_s:.6f}"))
    f1_log.close()
    rounds_log.close()
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in state.snapshot().weights.items()}, str(out / schema.MODEL))
    record.update(updates=applied, rounds_per_server=state.rounds(), wall_s=round(time.perf_counter() - t0, 2))
    (out / schema.CONFIG).write_text(json.dumps(record, indent=2) + "\n")
    return out


def main(args: Args) -> int:
    if not (args.run / schema.CONFIG).is_file() or not (args.run / schema.ROUNDS).is_file():
        print(f"twin: {args.run} is not a finished run folder (config.json and rounds.csv)", file=sys.stderr)
        return 2
    modes = ["formula", "replay"] if args.mode == "both" else [args.mode]
    try:
        for mode in modes:
            out = make_twin(args.run, mode, args.free_rate_mbit, args.data_dir)
            print(f"twin: {mode} -> {out}")
    except (ValueError, KeyError, data.DatasetUnavailable) as e:
        print(f"twin: {e}", file=sys.stderr)
        return 2
    return 0


PROG = "python -m asyncfl.analysis.twin"

if __name__ == "__main__":
    sys.exit(inputs.guarded(main, tyro.cli(Args, prog=PROG, description=__doc__), PROG))
