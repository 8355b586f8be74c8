"""Start the data owners: split the training set once, then one process per server, each on a websocket.

    python -m asyncfl.server --n-servers 4 --stdev 600 --dataset mnist-5k --speeds "1 1 1 4"

Server i listens on ws://HOST:BASE_PORT+i (``--base-port 0`` lets every server pick a free port). Once
every server listens, this prints one line ``READY ws://...,ws://...`` (``wss://`` with TLS) and, with ``--ready-file``, writes
the same comma-separated addresses to that file (written whole, then renamed into place), which is what
``train.sh`` and the tests wait for. It then runs until SIGINT/SIGTERM, or until a server process dies,
and stops every process it started. A server process that dies is restarted on its port (``--max-restarts``).

With a token (``ASYNCFL_TOKEN=... python -m asyncfl.server``) every connection must present it; listening
beyond loopback (``--host 0.0.0.0``) requires one. ``--certfile/--keyfile`` add TLS (see net/auth.py).
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing as mp
import multiprocessing.connection
import os
import queue
import signal
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from asyncfl.core import data, datasets
from asyncfl.core import regime as regime_mod
from asyncfl.core.conditions import Links
from asyncfl.core.split import SplitRefused, describe_split, format_table, make_split
from asyncfl.net import auth, tcp
from asyncfl.netem import lab as netem
from asyncfl.process.lifecycle import die_with_parent
from asyncfl.process.runlog import setup_logging
from asyncfl.server.owner import ServerSpec, serve_shard
from asyncfl.settings import ServerArgs as Args
from asyncfl.settings import parse_speeds, problems

log = logging.getLogger("asyncfl.server")


def load_shard(path: str, dataset: str) -> data.Dataset:
    """A data owner's own data (``--shard``): an .npz with ``images`` uint8 [n, H, W] and ``labels``
    integers in 0..C-1 [n] (H, W and C those of ``dataset``'s registry entry), e.g. ``numpy.savez("mine.npz", images=images, labels=labels)``. Read without
    pickle; the images are normalised as ``dataset``'s."""
    with np.load(path, allow_pickle=False) as f:
        if set(f.files) != {"images", "labels"}:
            raise ValueError(f"{path} must hold exactly the arrays 'images' and 'labels' (it has {sorted(f.files)})")
        images, labels = f["images"], f["labels"]
    spec = datasets.get(dataset)
    shape = (len(images), *spec.image_shape)
    if images.dtype != np.uint8 or images.shape != shape:
        raise ValueError(f"{path}: images must be uint8 [n, {spec.image_shape[0]}, {spec.image_shape[1]}] "
                         f"(a {dataset} image), not {images.dtype} {list(images.shape)}")
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer) or len(labels) == 0 \
            or labels.min() < 0 or labels.max() >= spec.n_classes:
        raise ValueError(f"{path}: labels must be n integers in 0..{spec.n_classes - 1}, one per image")
    empty = np.zeros((0, *spec.image_shape), np.uint8)
    return data.Dataset(dataset, path, images, labels.astype(np.int64), empty, np.zeros(0, np.int64), spec.n_classes)


def main(args: Args) -> int:
    setup_logging()
    if bad := problems(args):
        for line in bad:
            log.error("%s", line)
        return 2
    try:
        speeds = parse_speeds(args.speeds, args.n_servers, args.seed)
        regime = regime_mod.resolve(args.regime, args.time_scale, args.pace_spread)
        links_wanted = Links.from_args(args)
        conditions, use_netns = links_wanted.per_server, links_wanted.in_namespaces()
        missing = netem.missing_tools(conditions) if use_netns else []
        if missing:
            raise ValueError("network conditions need " + " and ".join(missing) + "; nothing was started")
        token = auth.resolve_token(args.token)
        if token is None and not auth.is_loopback(args.host):
            raise ValueError(f"listening on {args.host!r} lets other machines in: set a token (--token or "
                             f"{auth.TOKEN_ENV}), or listen on 127.0.0.1")
        auth.server_ssl_context(args.certfile, args.keyfile)  # fail now, not in every server process
        tcp.check_settable(args.tcp_cc)  # likewise: a kernel without it, or a user who may not set it
        if not -1 <= args.server_id < args.n_servers:
            raise ValueError(f"--server-id must be in 0..{args.n_servers - 1}")
        if args.shard and use_netns:
            raise ValueError("--shard starts one data owner without emulated network conditions")
        ds = load_shard(args.shard, args.dataset) if args.shard else data.load(args.dataset, args.data_dir)
        shards, split = own_split(args, ds) if args.shard else make_split(args, ds.train_labels, ds.n_classes, ds.name,
                                                                            ds.source)
    except SplitRefused as e:
        log.error("refused: %s", e)
        return 2
    except (ValueError, OSError, data.DatasetUnavailable) as e:
        log.error("%s", e)
        return 2
    if not args.shard:
        log.info("split of %s over %d servers (%s), split seed %d, fingerprint %s:\n%s", ds.name, args.n_servers,
                 describe_split(split), args.split_seed, split["fingerprint_digest"],
                 format_table(np.array(split["fingerprints"]["class_counts"])))
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops us like Ctrl-C
    if args.die_with_parent:
        die_with_parent()
    lab = netem.NetworkLab()
    try:
        links = lab.create(conditions, regime.rto_min_ms) if use_netns else []
        paces = regime.paces(np.random.default_rng([args.seed, 1]), args.n_servers, args.compute_s)
        return _serve(args, ds, shards, split, speeds, paces, conditions, links, token)
    except netem.NetemError as e:
        log.error("%s; nothing was started", e)
        return 2
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second signal must not cut the clean-up short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        lab.close()


def own_split(args: Args, ds: data.Dataset) -> tuple[list[np.ndarray], dict]:
    """``--shard``: the owner's own data, whole, named by the SHA-256 of its bytes."""
    digest = hashlib.sha256(ds.train_images.tobytes() + ds.train_labels.tobytes()).hexdigest()
    log.info("own data from %s: %d samples, per class %s, sha256 %s", args.shard, len(ds.train_labels),
             np.bincount(ds.train_labels, minlength=ds.n_classes).tolist(), digest)
    return [np.arange(len(ds.train_labels))], {"dataset": ds.name, "dataset_source": ds.source, "partition": "own",
                                               "shard_file": args.shard, "data_sha256": digest}


def _serve(args: Args, ds: data.Dataset, shards: list[np.ndarray], split: dict, speeds: list[float],
           paces: list[float], conditions: list, links: list, token: str | None) -> int:
    # Server processes are forked from this one, which has imported torch and loaded the data: spawned,
    # each would import it again (docs/performance.md). This process starts no threads and holds no
    # sockets, so a forked server starts as clean as a spawned one.
    ctx = mp.get_context("fork")
    ready_queue = ctx.Queue()
    for link in links:
        log.info("server-%d in namespace %s at %s: loss %g%%, delay %g ms, rate %s (%s)", link.index, link.netns,
                 link.ns_addr, link.conditions.loss_pct, link.conditions.delay_ms,
                 f"{link.conditions.rate_mbit:g} Mbit/s" if link.conditions.rate_mbit else "unlimited",
                 ", ".join(f"{k} by {v}" for k, v in link.mechanism.items()) or "no emulation")
    specs = _specs(args, ds, shards, split, speeds, paces, conditions, links, token)
    procs = []
    try:
        for spec in specs:
            procs.append(_start(ctx, spec, ready_queue))
        ports = _wait_ready(procs, ready_queue, args.start_timeout_s)
        if ports is None:
            return 1
        scheme = "wss" if args.certfile else "ws"
        addresses = ",".join(f"{scheme}://{spec.host}:{ports[spec.index]}" for spec in specs)
        if args.ready_file:
            tmp = Path(args.ready_file + ".tmp")
            tmp.write_text(addresses + "\n")
            tmp.rename(args.ready_file)
        print(f"READY {addresses}", flush=True)
        return _supervise(args, ctx, procs, specs, ports, ready_queue)
    except KeyboardInterrupt:
        log.info("stopping %d servers", len(procs))
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _stop_all(procs)


def _specs(args: Args, ds: data.Dataset, shards: list[np.ndarray], split: dict, speeds: list[float],
           paces: list[float], conditions: list, links: list, token: str | None) -> list[ServerSpec]:
    """The data owners this process starts: all, or one (the same shard every host derives from the seed)."""
    chosen = [max(args.server_id, 0)] if args.shard else [args.server_id] if args.server_id >= 0 else range(args.n_servers)
    hosts = [link.ns_addr for link in links] or [args.host] * args.n_servers
    paced = regime_mod.resolve(args.regime, args.time_scale, args.pace_spread).paced
    specs = []
    for i in chosen:
        shard = shards[0] if args.shard else shards[i]
        network = links[i].describe() if links else {"netns": None, "address": args.host, **asdict(conditions[i]),
                                                     "mechanism": {}}
        specs.append(ServerSpec(
            index=i,
            name=f"server-{i}",
            host=hosts[i],
            netns=links[i].netns if links else None,
            network=network,
            port=args.port if args.port and len(chosen) == 1 else args.base_port + i if args.base_port else 0,
            dataset_key=ds.name,
            images=ds.train_images[shard],
            labels=ds.train_labels[shard],
            seed=args.seed,
            speed_ratio=speeds[i],
            pace_s=paces[i],
            split=split,
            token=token,
            certfile=args.certfile,
            keyfile=args.keyfile,
            owner_pid=os.getpid(),
            tcp_cc=args.tcp_cc,
            faults=args.faults,
            warm_torchscript=paced,  # the paced regime's default is the original wire
            regime=args.regime,
        ))
    return specs


def _supervise(args: Args, ctx, procs: list, specs: list[ServerSpec], ports: dict, ready_queue) -> int:
    """Serve until told to stop. A server process that dies is started again on the same port with the
    same shard (its client reconnects); past --max-restarts the whole set stops, since a run with a
    missing data owner would silently be a different experiment."""
    restarts = [0] * len(procs)
    while True:
        sentinels = {p.sentinel: i for i, p in enumerate(procs)}
        for s in mp.connection.wait(list(sentinels)):
            i = sentinels[s]
            procs[i].join(1.0)  # reap it, so that its exit code is known
            if restarts[i] >= args.max_restarts:
                log.error("%s exited with code %s after %d restarts; stopping all servers", specs[i].name,
                          procs[i].exitcode, restarts[i])
                return 1
            restarts[i] += 1
            port = ports[specs[i].index]
            log.warning("%s exited with code %s; restarting it on port %d (restart %d of %d)", specs[i].name,
                        procs[i].exitcode, port, restarts[i], args.max_restarts)
            if restarts[i] > 1:  # a server that keeps dying at once must not spin: back off
                time.sleep(min(8.0, 2.0 ** (restarts[i] - 2)))
            specs[i] = replace(specs[i], port=port)
            procs[i] = _start(ctx, specs[i], ready_queue)


def _start(ctx, spec: ServerSpec, ready_queue):
    p = ctx.Process(target=serve_shard, args=(spec, ready_queue), name=spec.name, daemon=True)
    p.start()
    return p


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
