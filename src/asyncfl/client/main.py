"""The model owner ("client"): trains the global model on the data servers with SSP + async FedAvg.

    python -m asyncfl.client --n-servers 4 --staleness-threshold 6 --duration-s 60 --dataset mnist-5k

One named thread per data server loops over rounds: wait at the Stale Synchronous Parallel gate, take a
snapshot of the global model, have the server train it (``fit``), then apply

    global += (new - snapshot) / n_servers

under the state's lock. A separate evaluator process scores snapshots taken every ``--eval-interval-s``
and whenever the smallest completed round advances (every ``--eval-every-rounds``-th advance).

The run folder (``--out-dir``) receives config.json, rounds.csv, events.csv (lost connections, servers
left out and rejoining), f1_time.csv, f1_epoch.csv, yappi.csv, client.log and the final model.safetensors. The servers
must be running (``python -m asyncfl.server``, or ``train.sh`` which starts both); the training itself,
from the first round to the written results, is training.py.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import signal
from pathlib import Path

from asyncfl import settings
from asyncfl.client.evaluator import EvaluatorArgs, run_evaluator
from asyncfl.client.remote import RemoteError, RemoteServer
from asyncfl.client.runfolder import default_out_dir, start_record
from asyncfl.client.training import Training
from asyncfl.core import rules, schema
from asyncfl.core.model import architecture_signature
from asyncfl.core.protocol import TrainConfig
from asyncfl.net import auth, tcp
from asyncfl.process.lifecycle import die_with_parent
from asyncfl.process.runlog import setup_logging, write_json
from asyncfl.settings import ClientArgs as Args

log = logging.getLogger("asyncfl.client")


def resolve_servers(args: Args) -> list[str]:
    if args.servers:
        return [s.strip() for s in args.servers.split(",") if s.strip()]
    return [f"ws://{args.host}:{args.base_port + i}" for i in range(args.n_servers)]


def check_servers(args: Args, infos: list[dict]) -> None:
    """Refuse servers this run cannot use as one experiment: another dataset or model, shards of different
    splits, a shard under one batch, or another time regime."""
    signature = architecture_signature(args.dataset)
    for info in infos:
        if info.get("dataset_key") != args.dataset:
            raise RemoteError(f"{info.get('server')} hosts {info.get('dataset_key')!r} but this client evaluates "
                              f"on {args.dataset!r}: pass the same --dataset to both")
        if info.get("architecture") != signature:
            raise RemoteError(f"{info.get('server')} runs a different model architecture")
    digests = {info.get("split", {}).get("fingerprint_digest") for info in infos}
    if len(digests) > 1 and None not in digests:
        raise RemoteError("the servers hold shards of different splits (fingerprints " + ", ".join(
            f"{i.get('server')}: {i.get('split', {}).get('fingerprint_digest')}" for i in infos) +
            "): start every data owner with the same split settings")
    for info in infos:
        if isinstance(info.get("n_samples"), int) and info["n_samples"] < args.batch_size:
            raise RemoteError(f"{info.get('server')} holds {info['n_samples']} samples, under one batch of "
                              f"{args.batch_size}: it could not train; change the split or --batch-size")
        server_cc = (info.get("tcp") or {}).get("cc")
        if server_cc and server_cc != args.tcp_cc:
            raise RemoteError(f"{info.get('server')}'s sockets use TCP {server_cc} and this client --tcp-cc {args.tcp_cc}: "
                              "start both with the same --tcp-cc")
        theirs = info.get("regime") or ("paper" if info.get("pace_s") else "fast")  # older servers: by their pace
        if theirs != args.regime:
            raise RemoteError(f"{info.get('server')} was started with --regime {theirs} and "
                              f"this client runs --regime {args.regime}: start both in the same regime")


def main(args: Args) -> int:
    setup_logging()
    # Until training starts, Ctrl-C or SIGTERM simply abort (installed explicitly: a shell starts background
    # jobs with SIGINT ignored, and train.sh stops us with SIGTERM).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        if args.die_with_parent:
            die_with_parent()
        return run(args)
    except KeyboardInterrupt:
        log.info("interrupted before training started")
        return 130


def run(args: Args) -> int:
    try:
        args, regime = settings.settle(args)
    except ValueError as e:
        log.error("%s", e)
        return 2
    if bad := settings.problems(args):
        for line in bad:
            log.error("%s", line)
        return 2
    try:
        tcp.check_settable(args.tcp_cc)
    except tcp.CcError as e:
        log.error("%s", e)
        return 2
    # The evaluator loads its test set while this process connects to the servers; it gets the run
    # folder once the servers have been accepted (until then nothing is written).
    # Forked, not spawned: this process has imported torch and has no threads yet, and a fresh interpreter
    # would import it again on a core the servers' start-up needs.
    ctx_mp = mp.get_context("fork")
    ev = EvaluatorArgs.open(ctx_mp, args.dataset, args.data_dir, args.evaluator_nice, args.eval_samples, args.eval_cpu_frac)
    evaluator = ctx_mp.Process(target=run_evaluator, args=(ev,), name="evaluator", daemon=True)
    evaluator.start()
    try:
        return connect_and_train(args, regime, evaluator, ev)
    finally:
        if evaluator.is_alive():  # the run ended before training: the evaluator never got a run folder
            evaluator.terminate()
            evaluator.join(5)


def connect_and_train(args: Args, regime, evaluator, ev: EvaluatorArgs) -> int:
    """Connect to the servers, write the run folder's first config.json, wait for the evaluator, train."""
    train_config = TrainConfig(args.batch_size, args.batches_per_round, args.lr, args.shuffle)
    uris = resolve_servers(args)
    try:
        token = auth.resolve_token(args.token)
        remotes = [RemoteServer(uri, f"server-{i}", token, args.cafile, args.shared_memory, args.timeout_on,
                                args.tcp_cc, args.dataset, args.wire) for i, uri in enumerate(uris)]
        rule = rules.build(args, len(remotes))  # with the gate's S it runs at (rule.staleness)
        train_config.validate()
        infos = [w.connect(args.connect_timeout_s) for w in remotes]
        check_servers(args, infos)
    except (ValueError, OSError, RemoteError) as e:
        log.error("%s", e)
        return 2
    out_dir = Path(args.out_dir or default_out_dir(infos, rule))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        log.error("--out-dir %s: %s", out_dir, e.strerror or e)
        return 2
    setup_logging(out_dir / schema.CLIENT_LOG)
    config = start_record(args, regime, uris, rule, token, train_config, infos, remotes)
    write_json(out_dir / schema.CONFIG, config)
    log.info("run folder %s; %d servers, %s, S=%d, %.0f s%s", out_dir, len(remotes), args.aggregation,
             rule.staleness, args.duration_s, f", paper regime K={args.time_scale:g}" if regime.paced else "")
    # Training starts once the evaluator can score: its start-up would otherwise eat the first seconds.
    while not ev.ready.wait(0.5):
        if not evaluator.is_alive():
            log.error("the evaluator exited with code %s before it was ready", evaluator.exitcode)
            return 1
    ev.requests.put(str(out_dir))
    log.info("evaluator ready (pid %d)", evaluator.pid)
    return Training(args, regime, remotes, infos, rule, train_config, evaluator, ev, out_dir,
                    config).run()
