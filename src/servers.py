"""Start the data owners: split the training set once, then one process per server, each on a websocket.

    python -m src.servers --n-servers 4 --stdev 600 --dataset mnist-5k --speeds "1 1 1 4"

Server i listens on ws://HOST:BASE_PORT+i (``--base-port 0`` lets every server pick a free port). Once
every server listens, this prints one line ``READY ws://...,ws://...`` and, with ``--ready-file``, writes
the same comma-separated addresses to that file (written whole, then renamed into place), which is what
``train.sh`` and the tests wait for. It then runs until SIGINT/SIGTERM, or until a server process dies,
and stops every process it started.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import multiprocessing.connection
import os
import queue
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import tyro

if __package__ in (None, ""):  # run as `python src/servers.py`: make `src` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from src import data, netem
from src.lifecycle import die_with_parent
from src.runlog import setup_logging
from src.split_dataset import class_count_table, format_table, split_indices
from src.worker import ServerSpec, serve_shard

log = logging.getLogger("asyncfl.servers")


@dataclass
class Args:
    n_servers: int = 4  # number of data servers (one process each)
    stdev: float = 0.0  # D: standard deviation of each server's per-class share, in samples (0 = even)
    dataset: data.DatasetName = data.DEFAULT_DATASET  # mnist-5k (offline), mnist (download) or fashion-mnist
    data_dir: str = "data"  # where downloaded datasets are stored
    seed: int = 0  # seed of the split and of each server's batch order
    speeds: str = ""  # per-server speed ratios, e.g. "1 1 1 4": server i takes ratio_i x its compute time per round (empty = all 1)
    loss: str = "0%"  # network loss L on every server's link, e.g. "10%" (the paper's L), in percent per direction
    losses: str = ""  # per-server loss in percent, e.g. "0 0 10 20" (instead of --loss)
    delays_ms: str = ""  # per-server added one-way delay in milliseconds, e.g. "0 0 50 200" (needs netem)
    rates_mbit: str = ""  # per-server bandwidth cap in Mbit/s, e.g. "0 0 100 10" (0 = unlimited)
    netns: Literal["auto", "always", "never"] = "auto"  # run each server in its own network namespace: auto = when any condition is set (needs root)
    host: str = "127.0.0.1"  # interface to listen on (servers in namespaces listen on their link's address)
    base_port: int = 8777  # server i listens on base_port + i (0 = pick free ports)
    ready_file: str = ""  # if set, write the servers' addresses here once all listen
    start_timeout_s: float = 120.0  # give up if the servers are not all listening after this many seconds
    die_with_parent: bool = False  # stop (cleanly) when the parent process dies, however it dies (train.sh sets it)


def parse_speeds(text: str, n_servers: int) -> list[float]:
    """'1 1 1 4' (spaces or commas) -> [1.0, 1.0, 1.0, 4.0]; empty -> all 1. Ratios below 1 are refused."""
    parts = text.replace(",", " ").split()
    if not parts:
        return [1.0] * n_servers
    if len(parts) != n_servers:
        raise ValueError(f"--speeds has {len(parts)} values for {n_servers} servers")
    speeds = [float(p) for p in parts]
    if any(not (1.0 <= s < 1e6) for s in speeds):
        raise ValueError("every speed ratio must be at least 1 (1 = full speed, 4 = four times slower)")
    return speeds


def main(args: Args) -> int:
    setup_logging()
    try:
        speeds = parse_speeds(args.speeds, args.n_servers)
        conditions = netem.parse_conditions(args.n_servers, args.loss, args.losses, args.delays_ms, args.rates_mbit)
        use_netns = args.netns == "always" or (args.netns == "auto" and not all(c.is_clean() for c in conditions))
        if args.netns == "never" and not all(c.is_clean() for c in conditions):
            raise ValueError("network conditions need namespaces; drop --netns never")
        missing = netem.missing_tools(conditions) if use_netns else []
        if missing:
            raise ValueError("network conditions need " + " and ".join(missing) + "; nothing was started")
        ds = data.load(args.dataset, args.data_dir)
    except (ValueError, data.DatasetUnavailable) as e:
        log.error("%s", e)
        return 2
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops us like Ctrl-C
    if args.die_with_parent:
        die_with_parent()
    lab = netem.NetworkLab()
    try:
        links = lab.create(conditions) if use_netns else []
        return _serve(args, ds, speeds, conditions, links)
    except netem.NetemError as e:
        log.error("%s; nothing was started", e)
        return 2
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second signal must not cut the clean-up short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        lab.close()


def _serve(args: Args, ds: data.Dataset, speeds: list[float], conditions: list, links: list) -> int:
    shards = split_indices(ds.train_labels, args.n_servers, args.stdev, np.random.default_rng(args.seed))
    table = class_count_table(ds.train_labels, shards, ds.n_classes)
    log.info("split of %s over %d servers, D=%g, seed=%d:\n%s", ds.name, args.n_servers, args.stdev, args.seed, format_table(table))
    split = {"dataset": ds.name, "dataset_source": ds.source, "n_servers": args.n_servers, "stdev": args.stdev, "seed": args.seed}

    ctx = mp.get_context("spawn")
    ready_queue = ctx.Queue()
    procs = []
    hosts = [link.ns_addr for link in links] or [args.host] * args.n_servers
    for link in links:
        log.info("server-%d in namespace %s at %s: loss %g%%, delay %g ms, rate %s (%s)", link.index, link.netns,
                 link.ns_addr, link.conditions.loss_pct, link.conditions.delay_ms,
                 f"{link.conditions.rate_mbit:g} Mbit/s" if link.conditions.rate_mbit else "unlimited",
                 ", ".join(f"{k} by {v}" for k, v in link.mechanism.items()) or "no emulation")
    for i, shard in enumerate(shards):
        network = links[i].describe() if links else {"netns": None, "address": args.host, **asdict(conditions[i]),
                                                     "mechanism": {}}
        spec = ServerSpec(
            index=i,
            name=f"server-{i}",
            host=hosts[i],
            netns=links[i].netns if links else None,
            network=network,
            port=args.base_port + i if args.base_port else 0,
            dataset_key=ds.name,
            images=ds.train_images[shard],
            labels=ds.train_labels[shard],
            seed=args.seed,
            speed_ratio=speeds[i],
            split=split,
        )
        p = ctx.Process(target=serve_shard, args=(spec, ready_queue), name=spec.name, daemon=True)
        p.start()
        procs.append(p)

    try:
        ports = _wait_ready(procs, ready_queue, args.start_timeout_s)
        if ports is None:
            return 1
        addresses = ",".join(f"ws://{hosts[i]}:{ports[i]}" for i in range(args.n_servers))
        if args.ready_file:
            tmp = Path(args.ready_file + ".tmp")
            tmp.write_text(addresses + "\n")
            tmp.rename(args.ready_file)
        print(f"READY {addresses}", flush=True)
        # Serve until told to stop; a server that dies takes the whole set down (a run with a missing
        # data owner would silently be a different experiment).
        sentinels = {p.sentinel: p for p in procs}
        while True:
            done = mp.connection.wait(list(sentinels), timeout=None)
            dead = [sentinels[s] for s in done]
            log.error("%s exited with code %s; stopping all servers", dead[0].name, dead[0].exitcode)
            return 1
    except KeyboardInterrupt:
        log.info("stopping %d servers", len(procs))
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _stop_all(procs)


def _wait_ready(procs, ready_queue, timeout_s: float) -> dict[int, int] | None:
    ports: dict[int, int] = {}
    deadline = time.monotonic() + timeout_s
    while len(ports) < len(procs):
        try:
            index, port = ready_queue.get(timeout=max(0.0, min(1.0, deadline - time.monotonic())))
        except queue.Empty:
            dead = [p for p in procs if not p.is_alive()]
            if dead:
                log.error("%s exited with code %s before listening", dead[0].name, dead[0].exitcode)
                return None
            if time.monotonic() > deadline:
                log.error("only %d of %d servers listening after %.0f s", len(ports), len(procs), timeout_s)
                return None
            continue
        if port < 0:
            return None
        ports[index] = port
    return ports


def _stop_all(procs) -> None:
    for p in procs:
        if p.is_alive():
            p.terminate()  # SIGTERM: the server closes its socket and exits
    deadline = time.monotonic() + 5.0
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the spawned servers before torch loads
    sys.exit(main(tyro.cli(Args, description=__doc__)))
