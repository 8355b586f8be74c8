"""Benchmark: what a round costs over its compute, time to F1 0.90 against central training, how updates
per second scale with the number of servers, and how long the split takes. Anyone can rerun it:

    .venv/bin/python bench/run.py            # the full benchmark (about 7 minutes on 2 cores)
    .venv/bin/python bench/run.py --quick    # a shorter version (about 5 minutes)

It starts the real ``src/asyncfl/server/main.py`` and ``src/asyncfl/client/main.py`` processes on loopback, reads the run files they
write, prints a table and writes ``bench/results.json``:

- ``round_overhead_ratio``: 1 server, 1 batch per round: median client-observed round time (``round_s``)
  over the median server compute time (``compute_s``), over every round of the run but the first 10;
  ``round_overhead_ratio_socket``: the same with ``--no-shared-memory`` (the weights in the frames).
  ``--only overhead`` measures just these two.
- ``tta90_fl_s`` / ``tta90_central_s`` / ``tta90_ratio``: seconds from the first round to F1 >= 0.90 on
  mnist-5k, 4 servers, D=0, S=9999, no loss (scored every ``--tta-eval-interval-s`` by an evaluator at
  niceness 19, no round-wise log), against a plain loop with the same model, batch size and learning
  rate scored at the same training-time interval (its scoring time not counted); median of
  ``--repeats`` each.
- ``scaling``: for each server count, aggregate updates per second (S=9999, time-wise evaluation only, so
  that the training pipeline is what is measured; ``updates_per_s_default_eval`` adds the client's default
  round-wise evaluation), that figure over the compute bound ``cores / median step time`` (the step time
  measured right before and right after each run, their mean used, since the machine's speed drifts),
  resident memory per server process (RSS, and PSS which splits shared pages among the processes sharing
  them), and ``startup_s``: seconds from starting server/main.py to all servers listening.
- ``sync_round_ratio``: 4 servers, ``--aggregation fedavg``, 1 batch of 32, the default evaluation and
  profiling: the median synchronous round (the time between two rounds' last updates, the first 10 left
  out) over the compute bound of one, ``servers x median step time / cores`` (the step time measured right
  before and after in the same invocation, their mean used); beside it each process's CPU per round from
  the kernel's own accounting (config.json's ``finished.cpu``): the client's per update, each server's
  beyond the step time measured alone, the evaluator's. ``--only sync`` measures just this.
- ``split_s``: median time to split 60,000 labels over 32 servers (D=600).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import tyro

from asyncfl.core import data
from asyncfl.core.model import Net, flatten, initial_weights, loss_fn
from asyncfl.core.protocol import TrainConfig
from asyncfl.core.split import original_gaussian_split
from asyncfl.core.task import Scorer, ShardTrainer, sgd_step
from asyncfl.process.runlog import read_rows

ROOT = Path(__file__).resolve().parent.parent

PYTHON = sys.executable
TOKEN = secrets.token_hex(16)


@dataclass
class Args:
    quick: bool = False  # shorter runs and one repeat: a rough figure in about 5 minutes
    out: str = "bench/results.json"  # where the figures are written
    servers: str = "1,2,4,8,16,32"  # server counts for the scaling table
    repeats: int = 3  # repeats of the time-to-F1 measurements (1 with --quick)
    overhead_s: float = 20.0  # length of the 1-server run that measures the round overhead, seconds
    scaling_s: float = 15.0  # length of each scaling run, seconds
    tta_s: float = 20.0  # length of each federated time-to-F1 run, seconds
    only: Literal["all", "overhead", "sync"] = "all"  # overhead: only the round overhead, both ways (about a minute); sync: only sync_round_ratio
    sync_s: float = 20.0  # length of the synchronous (fedavg) run of sync_round_ratio, seconds
    tta_eval_interval_s: float = 0.1  # scoring interval of both time-to-F1 measurements, seconds: their resolution


@contextlib.contextmanager
def servers(n: int, workdir: Path, *flags: str):
    """server/main.py with n servers on free loopback ports; yields (addresses, process, seconds to start)."""
    ready = workdir / f"servers-{n}.ready"
    ready.unlink(missing_ok=True)  # left by an earlier start with as many servers
    log = open(workdir / f"servers-{n}.log", "w")
    proc = subprocess.Popen([PYTHON, "-m", "asyncfl.server", "--n-servers", str(n), "--base-port", "0",
                             "--ready-file", str(ready), "--die-with-parent", *flags], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, env={**os.environ, "ASYNCFL_TOKEN": TOKEN})
    t0 = time.perf_counter()
    try:
        while not ready.exists():  # the readiness signal
            if proc.poll() is not None:
                raise RuntimeError(f"server/main.py exited: {(workdir / f'servers-{n}.log').read_text()[-2000:]}")
            time.sleep(0.05)
        yield ready.read_text().strip(), proc, time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait()
        log.close()


def client(addresses: str, out_dir: Path, duration_s: float, *flags: str) -> dict:
    """One client run; returns its config.json."""
    run = subprocess.run([PYTHON, "-m", "asyncfl.client", "--servers", addresses, "--duration-s", str(duration_s),
                          "--out-dir", str(out_dir), "--no-live", *flags], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "ASYNCFL_TOKEN": TOKEN})
    if run.returncode != 0:
        raise RuntimeError(f"client failed ({run.returncode}):\n{run.stdout[-3000:]}{run.stderr[-3000:]}")
    return json.loads((out_dir / "config.json").read_text())


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of a process in KiB."""
    rss = pss = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Rss:"):
            rss = int(line.split()[1])
        elif line.startswith("Pss:"):
            pss = int(line.split()[1])
    return rss, pss


def step_time_s(n_steps: int = 200) -> float:
    """Median compute time of a round as a server runs and reports it (``ShardTrainer.fit``'s ``compute_s``:
    load the weights, forward, backward, SGD; one batch of 32, weights flat as from shared memory), in this
    process on one thread: the unit of the compute bound."""
    ds = data.load("mnist-5k", str(ROOT / "data"))
    worker = ShardTrainer("bench", ds.name, data.to_tensor(ds.train_images, ds.name), torch.from_numpy(ds.train_labels))
    weights, config = flatten(initial_weights(0)), TrainConfig()
    times = [worker.fit(ds.name, config, weights).compute_s for _ in range(n_steps + 10)]
    return statistics.median(times[10:])


def central_tta90_s(seed: int, eval_every_s: float = 0.1, limit_s: float = 60.0) -> float | None:
    """Plain single-process training with the same model, batch size and learning rate; scored every
    ``eval_every_s`` seconds of training (scoring time not counted). Training seconds to F1 >= 0.90."""
    ds = data.load("mnist-5k", str(ROOT / "data"))
    x, y = data.to_tensor(ds.train_images, ds.name), torch.from_numpy(ds.train_labels)
    scorer = Scorer(ds)
    net = Net()
    net.load_state_dict(initial_weights(seed))
    params = list(net.parameters())
    rng = np.random.default_rng(seed)
    order, pos, trained_s, next_eval = rng.permutation(len(y)), 0, 0.0, 0.0
    while trained_s < limit_s:
        if trained_s >= next_eval:
            if scorer.f1({k: v.detach() for k, v in net.state_dict().items()}) >= 0.90:
                return round(trained_s, 3)
            next_eval += eval_every_s
        t = time.perf_counter()
        if pos >= len(y):
            order, pos = rng.permutation(len(y)), 0
        idx = torch.from_numpy(order[pos : pos + 32])
        pos += 32
        net.zero_grad(set_to_none=True)
        loss_fn(net(x[idx]), y[idx]).backward()
        sgd_step(params, 0.1)
        trained_s += time.perf_counter() - t
    return None


def first_time_at(out_dir: Path, threshold: float) -> float | None:
    return next((float(r["time_s"]) for r in read_rows(out_dir / "f1_time.csv") if float(r["f1"]) >= threshold), None)


def median_or_none(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


def bench_overhead(args: Args, workdir: Path, suffix: str = "", *flags: str) -> dict:
    with servers(1, workdir) as (addresses, *_):
        client(addresses, workdir / f"overhead{suffix}", args.overhead_s, "--eval-interval-s", str(args.overhead_s),
               *flags)
    rows = read_rows(workdir / f"overhead{suffix}" / "rounds.csv")[10:]
    round_s = statistics.median(float(r["round_s"]) for r in rows)
    compute_s = statistics.median(float(r["compute_s"]) for r in rows)
    return {f"rounds{suffix}": len(rows), f"round_s_median{suffix}": round(round_s, 5),
            f"compute_s_median{suffix}": round(compute_s, 5), f"round_overhead_ratio{suffix}": round(round_s / compute_s, 3)}


def bench_tta(args: Args, workdir: Path) -> dict:
    fl = []
    with servers(4, workdir, "--stdev", "0") as (addresses, *_):
        for r in range(args.repeats):
            out = workdir / f"tta-{r}"
            # Only the time-wise log, as for the central loop: round-wise scoring would take CPU from training.
            # The evaluator at the lowest priority: the central loop's scoring time is not counted at all,
            # and at the client's default (niceness 10) scoring every 0.1 s took 7% of a core from training.
            client(addresses, out, args.tta_s, "--staleness-threshold", "9999", "--eval-interval-s",
                   str(args.tta_eval_interval_s), "--eval-every-rounds", str(10**9), "--evaluator-nice", "19",
                   "--seed", str(r))
            fl.append(first_time_at(out, 0.90))
    central = [central_tta90_s(seed, args.tta_eval_interval_s) for seed in range(args.repeats)]
    fl_s, central_s = median_or_none(fl), median_or_none(central)
    return {"tta90_fl_s": fl_s, "tta90_central_s": central_s, "tta90_fl_runs_s": fl, "tta90_central_runs_s": central,
            "tta90_ratio": round(fl_s / central_s, 3) if fl_s and central_s else None}


def bench_sync_round(args: Args, workdir: Path, n: int = 4) -> dict:
    """sync_round_ratio and who spends each millisecond of a synchronous round beyond training."""
    cores = len(os.sched_getaffinity(0))
    step_before_s = step_time_s(100)
    with servers(n, workdir) as (addresses, *_):
        config = client(addresses, workdir / "sync", args.sync_s, "--aggregation", "fedavg")
    step_after_s = step_time_s(100)
    step_s = (step_before_s + step_after_s) / 2
    rows = read_rows(workdir / "sync" / "rounds.csv")
    ends: dict[int, float] = {}
    for r in rows:  # a synchronous round ends with its last server's update
        ends[int(r["round"])] = max(ends.get(int(r["round"]), 0.0), float(r["time_s"]))
    times = [ends[k] for k in sorted(ends)][10:]
    round_s = statistics.median(b - a for a, b in zip(times, times[1:]))
    bound_s = n * step_s / cores
    fin, cpu = config["finished"], config["finished"]["cpu"]
    rounds = min(fin["rounds_per_server"])
    server_cpu = [cpu[f"server-{i}"]["cpu_s"] / fin["rounds_per_server"][i] for i in range(n)]
    return {"sync_round_ratio": round(round_s / bound_s, 3), "sync_round_s_median": round(round_s, 5),
            "sync_bound_s": round(bound_s, 5), "sync_step_s_before": round(step_before_s, 5),
            "sync_step_s_after": round(step_after_s, 5), "sync_rounds": rounds,
            # per server result combined (fedavg counts one global update a round)
            "sync_client_cpu_ms_per_update": round(1000 * cpu["client"]["cpu_s"] / sum(fin["rounds_per_server"]), 3),
            "sync_server_cpu_ms_per_round": [round(1000 * c, 3) for c in server_cpu],
            # beyond the step's own CPU (measured alone): rounds.csv's compute_s is wall time, two servers a core
            "sync_server_beyond_step_ms": [round(1000 * (c - step_s), 3) for c in server_cpu],
            "sync_evaluator_cpu_ms_per_round": round(1000 * cpu["evaluator"]["cpu_s"] / rounds, 3),
            "sync_other_cpu_ms_per_round": {k: round(1000 * v["cpu_s"] / rounds, 3) for k, v in cpu.items()
                                            if k not in ("client", "evaluator") and not k.startswith("server-")},
            "sync_starved": fin.get("starved")}


def bench_scaling(args: Args, workdir: Path) -> list[dict]:
    cores = len(os.sched_getaffinity(0))
    table = []
    for n in [int(v) for v in args.servers.split(",")]:
        # The bound is measured right before and right after each run, and their mean used: this machine's
        # speed drifts by up to ±15% within minutes (one measurement before a run read 16.1 ms, against
        # 13.0 ms for the rows around it, and put that run at 98.7% of its bound).
        step_before_s = step_time_s(100)
        with servers(n, workdir) as (addresses, _, startup_s):
            config = client(addresses, workdir / f"scaling-{n}", args.scaling_s, "--eval-interval-s", str(args.scaling_s),
                            "--eval-every-rounds", str(10**9))
            memory = [memory_kib(info["pid"]) for info in config["server_info"]]
            default = client(addresses, workdir / f"scaling-{n}-eval", args.scaling_s) if n <= 8 else None
        step_after_s = step_time_s(100)
        step_s = (step_before_s + step_after_s) / 2
        bound = cores / step_s
        fin = config["finished"]
        per_s = fin["updates"] / fin["training_s"]
        table.append({
            "servers": n,
            "updates_per_s": round(per_s, 1),
            "of_compute_bound": round(per_s / bound, 3),
            "step_s_median": round(step_s, 5),  # mean of the two medians below
            "step_s_median_before": round(step_before_s, 5),
            "step_s_median_after": round(step_after_s, 5),
            "updates_per_s_default_eval": round(default["finished"]["updates"] / default["finished"]["training_s"], 1)
            if default else None,
            "rss_mib_per_server": round(statistics.mean(m[0] for m in memory) / 1024, 1),
            "pss_mib_per_server": round(statistics.mean(m[1] for m in memory) / 1024, 1),
            "startup_s": round(startup_s, 2),
            "errors": fin["errors"],
        })
        print(f"  {n:3d} servers: {per_s:6.1f} updates/s = {per_s / bound:5.1%} of the bound", flush=True)
    return table


def bench_split(n_repeats: int = 7) -> float:
    labels = np.repeat(np.arange(10), 6000)  # MNIST's 60,000 training labels, 6,000 per class
    np.random.default_rng(0).shuffle(labels)
    times = []
    for i in range(n_repeats):
        t = time.perf_counter()
        original_gaussian_split(labels, 32, 600.0, random.Random(i))
        times.append(time.perf_counter() - t)
    return round(statistics.median(times), 4)


def main(args: Args) -> int:
    torch.set_num_threads(1)
    if args.quick:
        args.repeats, args.overhead_s, args.scaling_s, args.tta_s = 1, 10.0, 8.0, 20.0
    results: dict = {"machine": {"cores": len(os.sched_getaffinity(0)), "python": sys.version.split()[0],
                                 "torch": torch.__version__}, "quick": args.quick}
    with tempfile.TemporaryDirectory(prefix="asyncfl-bench-") as tmp:
        workdir = Path(tmp)
        print("split ...", flush=True)
        results["split_s"] = bench_split()
        print("step time ...", flush=True)
        step_s = step_time_s()
        results["step_s_median"] = round(step_s, 5)
        results["compute_bound_updates_per_s"] = round(results["machine"]["cores"] / step_s, 1)
        if args.only != "sync":
            print("round overhead (1 server) ...", flush=True)
            results.update(bench_overhead(args, workdir))
            results.update(bench_overhead(args, workdir, "_socket", "--no-shared-memory"))
        if args.only == "overhead":
            print(json.dumps({k: v for k, v in results.items() if "overhead" in k or "_s_median" in k}, indent=2))
            return 0
        print("synchronous round (4 servers, fedavg) ...", flush=True)
        results.update(bench_sync_round(args, workdir))
        if args.only == "sync":
            print(json.dumps({k: v for k, v in results.items() if k.startswith("sync")}, indent=2))
            return 0
        print("time to F1 0.90 ...", flush=True)
        results.update(bench_tta(args, workdir))
        print("scaling ...", flush=True)
        results["scaling"] = bench_scaling(args, workdir)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(f"\nwritten to {args.out}")
    return 0


def print_table(r: dict) -> None:
    print(f"\n{'figure':<34}{'value':>12}")
    for key, unit in [("round_overhead_ratio", ""), ("round_s_median", "s"), ("compute_s_median", "s"),
                      ("round_overhead_ratio_socket", ""), ("round_s_median_socket", "s"),
                      ("tta90_fl_s", "s"), ("tta90_central_s", "s"), ("tta90_ratio", ""), ("split_s", "s"),
                      ("step_s_median", "s"), ("compute_bound_updates_per_s", "/s"), ("sync_round_ratio", ""),
                      ("sync_round_s_median", "s"), ("sync_client_cpu_ms_per_update", "ms"),
                      ("sync_evaluator_cpu_ms_per_round", "ms")]:
        print(f"{key:<34}{r[key] if r[key] is not None else 'never':>12} {unit}")
    print(f"{'sync_server_beyond_step_ms':<34}{' '.join(f'{v:.2f}' for v in r['sync_server_beyond_step_ms']):>12} ms")
    print(f"\n{'servers':>7} {'updates/s':>10} {'of bound':>9} {'with eval':>10} {'RSS MiB':>8} {'PSS MiB':>8} "
          f"{'start s':>8} {'step ms':>8}")
    for row in r["scaling"]:
        with_eval = row["updates_per_s_default_eval"]
        print(f"{row['servers']:>7} {row['updates_per_s']:>10} {row['of_compute_bound']:>9.1%} "
              f"{with_eval if with_eval is not None else '-':>10} {row['rss_mib_per_server']:>8} "
              f"{row['pss_mib_per_server']:>8} {row['startup_s']:>8} {1000 * row['step_s_median']:>8.2f}")


if __name__ == "__main__":
    sys.exit(main(tyro.cli(Args, prog="bench/run.py", description=__doc__)))
