"""The model owner ("client"): trains the global model on the data servers with SSP + async FedAvg.

    python -m asyncfl.client --n-servers 4 --staleness-threshold 6 --duration-s 60 --dataset mnist-5k

One named thread per data server loops over rounds: wait at the Stale Synchronous Parallel gate, take a
snapshot of the global model, have the server train it (``fit``), then apply

    global += (new - snapshot) / n_servers

under the state's lock. A separate evaluator process scores snapshots taken every ``--eval-interval-s``
and whenever the smallest completed round advances (every ``--eval-every-rounds``-th advance).

The run folder (``--out-dir``) receives config.json, rounds.csv, events.csv (lost connections, servers
left out and rejoining), f1_time.csv, f1_epoch.csv, yappi.csv, client.log and the final model.safetensors. The servers must be running (``src/asyncfl/servers.py``, or
``train.sh`` which starts both).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

from safetensors.torch import save_file

from asyncfl import settings
from asyncfl.client import profiling
from asyncfl.client.evaluator import run_evaluator
from asyncfl.client.feed import EvalFeed, ScoreReport
from asyncfl.client.live import LiveStatus
from asyncfl.client.remote import BackoffSampler, RemoteError, RemoteServer
from asyncfl.client.rounds import RunContext, eval_timer, server_loop
from asyncfl.client.runfolder import (
    EVENTS_HEADER,
    ROUNDS_HEADER,
    default_out_dir,
    local_processes,
    redacted,
    tcp_record,
    transport_record,
    versions,
    write_json,
)
from asyncfl.core import rules
from asyncfl.core.model import architecture_signature, flatten, initial_weights
from asyncfl.core.protocol import TrainConfig
from asyncfl.core.state import TrainingState
from asyncfl.net import auth, tcp
from asyncfl.process import cpu
from asyncfl.process.lifecycle import die_with_parent
from asyncfl.process.runlog import CsvLog, setup_logging
from asyncfl.settings import ClientArgs as Args

log = logging.getLogger("asyncfl.client")


def make_rule(args: Args, n_servers: int) -> tuple[rules.Rule, int]:
    """The aggregation rule, and the staleness threshold the gate uses with it (a rule with a barrier of
    its own, fedavg: 0)."""
    rule = rules.build(args, n_servers)
    return rule, rule.staleness_threshold(args.staleness_threshold)


def resolve_servers(args: Args) -> list[str]:
    if args.servers:
        return [s.strip() for s in args.servers.split(",") if s.strip()]
    return [f"ws://{args.host}:{args.base_port + i}" for i in range(args.n_servers)]


def check_servers(args: Args, infos: list[dict]) -> None:
    """Refuse servers this run cannot use as one experiment: another dataset or model, shards of different
    splits, a shard under one batch, or another time regime."""
    for info in infos:
        if info.get("dataset_key") != args.dataset:
            raise RemoteError(f"{info.get('server')} hosts {info.get('dataset_key')!r} but this client evaluates "
                              f"on {args.dataset!r}: pass the same --dataset to both")
        if info.get("architecture") != architecture_signature(args.dataset):
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
        paced = bool(info.get("pace_s"))
        if paced != (args.regime == "paper"):
            raise RemoteError(f"{info.get('server')} was started {'with' if paced else 'without'} --regime paper and "
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
    queue, scores, ready, hurry = ctx_mp.Queue(maxsize=1), ctx_mp.Queue(), ctx_mp.Event(), ctx_mp.Event()
    free, epoch_ok_at = ctx_mp.Semaphore(1), ctx_mp.Value("d", 0.0, lock=False)
    evaluator = ctx_mp.Process(target=run_evaluator, name="evaluator", daemon=True,
                               args=(queue, scores, ready, hurry, args.dataset, args.data_dir, args.evaluator_nice,
                                     args.eval_samples, free, epoch_ok_at, args.eval_cpu_frac))
    evaluator.start()
    try:
        return train(args, regime, evaluator, queue, scores, ready, hurry, free, epoch_ok_at)
    finally:
        if evaluator.is_alive():  # the run ended before training: the evaluator never got a run folder
            evaluator.terminate()
            evaluator.join(5)


def train(args: Args, regime, evaluator, queue, scores, ready, hurry, free, epoch_ok_at) -> int:
    train_config = TrainConfig(args.batch_size, args.batches_per_round, args.lr, args.shuffle)
    uris = resolve_servers(args)
    try:
        token = auth.resolve_token(args.token)
        remotes = [RemoteServer(uri, f"server-{i}", token, args.cafile, args.shared_memory, args.timeout_on,
                                args.tcp_cc, args.dataset) for i, uri in enumerate(uris)]
        rule, staleness_threshold = make_rule(args, len(remotes))
        train_config.validate()
        infos = [w.connect(args.connect_timeout_s) for w in remotes]
        check_servers(args, infos)
    except (ValueError, OSError, RemoteError) as e:
        log.error("%s", e)
        return 2

    out_dir = Path(args.out_dir or default_out_dir(infos, args.staleness_threshold))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        log.error("--out-dir %s: %s", out_dir, e.strerror or e)
        return 2
    setup_logging(out_dir / "client.log")
    config = {
        "args": redacted(args),
        "servers": uris,
        "aggregation": rule.describe(),
        "staleness_threshold": staleness_threshold,  # the gate's S as used (fedavg: 0)
        "security": {"token": token is not None, "tls": [u.startswith("wss://") for u in uris], "cafile": args.cafile},
        "n_servers": len(remotes),
        "train_config": train_config.to_dict(),
        "server_info": infos,
        "regime": {"name": args.regime, **(regime.to_dict() if regime else {})},
        "transport": transport_record(infos, remotes),
        "tcp": tcp_record(args.tcp_cc, infos, remotes),
        "weights_via": [w.weights_via for w in remotes],  # per server: "websocket" or "shared memory"
        "dataset": infos[0].get("split", {}),
        "shard_fingerprints": [info.get("shard_fingerprint") for info in infos],  # what each owner says it holds
        "versions": versions(),
        "started_at": datetime.now().isoformat(timespec="seconds"),
    }
    write_json(out_dir / "config.json", config)
    log.info("run folder %s; %d servers, %s, S=%d, %.0f s%s", out_dir, len(remotes), args.aggregation,
             staleness_threshold, args.duration_s, f", paper regime K={args.time_scale:g}" if regime else "")

    # Training starts once the evaluator can score: its start-up would otherwise eat the first seconds.
    while not ready.wait(0.5):
        if not evaluator.is_alive():
            log.error("the evaluator exited with code %s before it was ready", evaluator.exitcode)
            return 1
    queue.put(str(out_dir))
    log.info("evaluator ready (pid %d)", evaluator.pid)

    # Flat (one buffer): copies into shared memory and the study's update are then one operation each.
    state = TrainingState(flatten(initial_weights(args.seed, args.dataset)), len(remotes), staleness_threshold, rule)
    rounds_log = CsvLog(out_dir / "rounds.csv", ROUNDS_HEADER)
    events_log = CsvLog(out_dir / "events.csv", EVENTS_HEADER)
    processes = local_processes(infos, evaluator.pid)
    cpu_before = {name: cpu.sample(pid) for name, pid in processes.items()}
    t0 = time.monotonic()

    def evaluator_behind() -> None:  # ctx is set by the time a round submits a snapshot
        ctx.event("evaluator", "evaluator_behind", f"{args.eval_backlog} round-wise snapshots wait for the "
                  "evaluator: more are skipped until it catches up (raise --eval-every-rounds or --eval-backlog)",
                  logging.WARNING)

    feed = EvalFeed(queue, t0, args.eval_backlog, evaluator_behind, latest_only=args.eval_every_rounds == 0,
                    free=free, epoch_ok_at=epoch_ok_at)
    ctx = RunContext(state, remotes, train_config, args.dataset, rounds_log, events_log, feed, args.eval_every_rounds,
                     args.round_timeout_s, regime.time_scale if regime else 1.0, t0, retries=[0] * len(remotes))
    errors: list[str] = []
    threads = [threading.Thread(target=server_loop, args=(ctx, i, errors), name=f"server-{i}") for i in range(len(remotes))]
    # Ctrl-C and SIGTERM end training early, however often they arrive: the handler only flags it, and
    # the results are still written and the evaluator drained.
    interrupted = threading.Event()

    def on_signal(signum, _frame):
        if not interrupted.is_set():
            log.info("%s: stopping, then writing the results", signal.Signals(signum).name)
        interrupted.set()
        hurry.set()  # the evaluator skips what it was sent but not yet scored, except the final model
        state.stop_event.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    if args.profile:
        profiling.start()
    # Every lossy link's backoff state lasts at least two minimum RTOs: sampling once a minimum RTO sees each.
    rto_min_s = min((info.get("network", {}).get("rto_min_ms") or 200.0) for info in infos) / 1000
    sampler = BackoffSampler(remotes, tick_s=max(0.005, rto_min_s)).start()
    timer = threading.Thread(target=eval_timer, args=(ctx, args.eval_interval_s, args.duration_s), name="eval-timer")
    timer.start()
    for t in threads:
        t.start()
    # Wait in short slices, not one long wait: the kernel may deliver a signal to any thread, and a main
    # thread blocked in one long lock wait would only run the Python handler when that wait ends. Each
    # slice also prints the scores that came in and refreshes the live status.
    live = LiveStatus(args.live and sys.stdout.isatty(), args.duration_s)
    report = ScoreReport(scores, live, args.verbose)
    deadline = t0 + args.duration_s
    try:
        while not state.stop_event.wait(min(0.25, max(0.0, deadline - time.monotonic()))):
            report.drain()
            live.update(time.monotonic() - t0, state.rounds(), state.updates())
            if args.server_timeout_s:
                for i in state.leave_out_silent(args.server_timeout_s):
                    ctx.event(i, "left_out", f"no answer for {args.server_timeout_s:g} s: the others go on without "
                              "it", logging.WARNING)
            if not ctx.feed.closed and not evaluator.is_alive():
                # No more scores, but the training (and its final model) is still worth finishing.
                ctx.feed.close()
                errors.append(f"evaluator exited with code {evaluator.exitcode} during training")
                ctx.event("evaluator", "evaluator_died", f"exit code {evaluator.exitcode}; training goes on without "
                          "F1 scores (score model.safetensors later with python -m asyncfl.client.evaluator)", logging.ERROR)
            if time.monotonic() >= deadline:
                break
    finally:
        live.stop()
    # Sampled before the connections close: a server's connection thread, where its work was, ends with them.
    cpu_after, cpu_wall_s = {name: cpu.sample(pid) for name, pid in processes.items()}, time.monotonic() - t0
    if cpu_after.get("client") and sampler.native_id in cpu_after["client"]:  # its own entry: see cpu.starved
        cpu_after["client-sampler"] = {sampler.native_id: cpu_after["client"].pop(sampler.native_id)}
        cpu_before["client-sampler"] = {}
    # The stop event is set only by a signal or by a server thread that failed; the deadline leaves it clear.
    stop_reason = "interrupted" if interrupted.is_set() else "error" if state.stop_event.is_set() else "duration"
    state.stop()
    for w in remotes:
        w.interrupt()  # rounds still out would be discarded anyway; don't wait up to a round timeout for them
    for t in threads + [timer]:
        t.join()
    sampler.stop()
    elapsed_s = time.monotonic() - t0
    cpu_shares = cpu.shares(cpu_before, cpu_after, cpu_wall_s)
    starved = cpu.starved(cpu_shares)
    if starved and regime is not None:  # unpaced runs keep every core busy by design
        ctx.event("machine", "starved", ", ".join(f"{n} waited for a core {100 * cpu_shares[n]['wait_frac']:.0f}% "
                  "of the time" for n in starved) + ": the machine was too busy for this run's timings",
                  logging.WARNING)
    final = state.snapshot()
    if interrupted.is_set():
        ctx.feed.drop_backlog()  # an interrupted run must end within seconds: only the final model is scored
    ctx.feed.submit("time", final.weights, final.min_round, final.max_round, time_s=elapsed_s, final=True)
    ctx.feed.finish()
    rounds_log.close()
    if args.profile:
        profiling.write_csv(out_dir / "yappi.csv", [t.name for t in threads], state.rounds(), state.max_staleness)
    save_file({k: v.contiguous() for k, v in final.weights.items()}, str(out_dir / "model.safetensors"))
    rounds = state.rounds()
    log.info("training stopped (%s) after %.1f s: %d updates, rounds per server %s, largest staleness %d",
             stop_reason, elapsed_s, state.updates(), rounds, max(state.max_staleness))

    report.drain()
    if ctx.feed.dropped and not ctx.feed.closed:
        log.info("interrupted: %d pending snapshots not scored", ctx.feed.dropped)
    pending = ctx.feed.backlog() + ctx.feed.submitted - report.count
    if pending > 0 and not ctx.feed.closed:
        log.info("waiting for the evaluator to score %d pending snapshots", pending)
    while evaluator.is_alive() or not scores.empty():
        evaluator.join(0.25)
        report.drain()
    if evaluator.exitcode != 0 and not ctx.feed.closed:
        errors.append(f"evaluator exited with code {evaluator.exitcode}")
        log.error("the evaluator exited with code %s", evaluator.exitcode)
    events_log.close()
    for w in remotes:
        w.close()
    config["finished"] = {
        "stop_reason": stop_reason,
        "training_s": round(elapsed_s, 3),
        "updates": state.updates(),  # changes of the global model (a buffering rule makes one per K results)
        "results": sum(state.rounds()) - sum(state.skipped),  # server results received and combined
        "rounds_per_server": rounds,
        "max_staleness_per_server": state.max_staleness,
        "retries_per_server": ctx.retries,
        "skipped_rounds_per_server": state.skipped,
        "left_out_at_end": sorted(state.left_out()),
        "evaluations": report.count - report.skipped,
        "evaluations_dropped": ctx.feed.dropped + report.skipped,
        "evaluations_skipped_behind": ctx.feed.skipped,  # round-wise snapshots not taken: the evaluator was behind
        "evaluations_superseded": ctx.feed.superseded,  # --eval-every-rounds 0: replaced by a newer one while waiting
        "cpu": cpu_shares,  # per local process: CPU seconds, share of the wall clock, run-queue wait
        "starved": starved,  # processes that waited for a core >= cpu.STARVED_WAIT_FRAC of the time (evaluator aside)
        "load_average": list(os.getloadavg()),
        "errors": errors,
    }
    write_json(out_dir / "config.json", config)
    log.info("results in %s", out_dir)
    return 1 if errors else 130 if stop_reason == "interrupted" else 0
