"""The study's algorithm on one screen: each data server's thread loops over rounds.

A round: wait at the SSP gate, take a snapshot of the global model, have the server train it (``fit``),
combine the result into the global model under the state's lock (the rule's ``prepare``/``combine``; the
study's is ``global += (new - snapshot) / n_servers``). A lost round is abandoned and retried on a new
connection (``--faults original``: only after a timeout, at once, as the original's train_loop did; any
other error ends that server's thread, an event, and the run goes on). ``eval_timer`` hands the evaluator a snapshot every interval. client/training.py starts the threads.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from asyncfl.client.feed import EvalFeed
from asyncfl.client.profiling import RoundTimers
from asyncfl.client.remote import ConnectionLost, RemoteError, RemoteServer
from asyncfl.core.protocol import TrainConfig
from asyncfl.core.state import TrainingState
from asyncfl.process.runlog import CsvLog

log = logging.getLogger("asyncfl.client")


@dataclass
class RunContext:
    """What every server thread shares; the mutable part is ``state`` (one lock) and the two logs."""

    state: TrainingState
    remotes: list[RemoteServer]
    train_config: TrainConfig
    dataset_key: str
    rounds_log: CsvLog
    events_log: CsvLog
    feed: "EvalFeed"
    eval_every_rounds: int
    round_timeout_s: float
    time_scale: float  # the paper regime's K (1 otherwise): reconnection back-off is divided by it
    t0: float  # time.monotonic() when training started
    retries: list[int] = field(default_factory=list)  # rounds abandoned per server (timeouts, lost connections)
    faults: str = "modern"  # original: reconnect at once after a timeout; any other error ends the thread
    timers: RoundTimers | None = None  # --profiler timers (client/profiling.py)

    def event(self, server: int | str, event: str, detail: str = "", level: int = logging.INFO,
              silence_s: float | None = None, round_s: float | None = None) -> None:
        """Something happened to a server (or the evaluator): into events.csv and the log."""
        self.events_log.write(round(time.monotonic() - self.t0, 4), server, event, detail,
                              "" if silence_s is None else round(silence_s, 4), "" if round_s is None else round(round_s, 4))
        who = f"server-{server}" if isinstance(server, int) else server
        log.log(level, "%s%s", event.replace("_", " "), f": {detail}" if detail else "", extra={"who": who})


def run_round(ctx: RunContext, server: int) -> bool:
    """One round of one server: gate, snapshot, remote fit, aggregate. False once the run stops."""
    if ctx.timers is None:
        return _round(ctx, server, None)
    clock = [time.perf_counter(), None, None]  # began; the gate's and the fit's seconds, once known
    try:
        return _round(ctx, server, clock)
    finally:
        ctx.timers.add(server, time.perf_counter() - clock[0], clock[2], clock[1])


def _round(ctx: RunContext, server: int, clock: list | None) -> bool:
    state = ctx.state
    ok = state.wait_turn(server)
    if clock is not None:
        clock[1] = time.perf_counter() - clock[0]
    if not ok:
        return False
    snap = state.snapshot()
    t = time.perf_counter()
    try:
        result = ctx.remotes[server].fit(dataset_key=ctx.dataset_key, train_config=ctx.train_config,
                                         weights=snap.weights, timeout_s=ctx.round_timeout_s)
    finally:
        round_s = time.perf_counter() - t
        if clock is not None:
            clock[2] = round_s
    if state.stop_event.is_set():
        return False  # the run ended while this round was out: it does not count
    prepared = state.rule.prepare(snap.weights, result.weights, result.n_samples)  # outside the lock
    info = state.apply(server, prepared, snap)
    if info.rejoined is not None:
        ctx.event(server, "rejoined", f"answered again at round {info.round}; {info.rejoined} rounds skipped")
    net = ctx.remotes[server].round_tcp
    tcp = dict.fromkeys(("retrans_segs", "rtos", "max_backoff", "rto_ms", "srtt_ms", "stall_s"), "") if net is None else dict(
        retrans_segs=net.retrans_segs, rtos="" if net.rtos is None else net.rtos, max_backoff=net.max_backoff,
        rto_ms=round(net.rto_ms, 3), srtt_ms=round(net.srtt_ms, 3), stall_s=round(net.stall_s(result.compute_s + result.idle_s), 6))
    ctx.rounds_log.write_row(
        time_s=round(time.monotonic() - ctx.t0, 4), server=server, round=info.round, staleness=info.staleness,
        updates_behind=info.updates_behind, loss=result.loss, round_s=round(round_s, 6), compute_s=round(result.compute_s, 6),
        idle_s=round(result.idle_s, 6), **tcp,
        # to the microsecond: their order is the order in which the lock let them happen
        start_s=f"{snap.taken_at - ctx.t0:.6f}", applied_s=f"{info.applied_at - ctx.t0:.6f}")
    # eval_every_rounds 0: every advance, the newest waiting replacing an older one (the feed's latest_only)
    if info.min_advanced and info.min_round % (ctx.eval_every_rounds or 1) == 0:
        ctx.feed.submit("epoch", info.weights, info.min_round, info.max_round)
    return True


def server_loop(ctx: RunContext, server: int, errors: list) -> None:
    remote = ctx.remotes[server]
    try:
        while True:
            try:
                if not run_round(ctx, server):
                    return
            except ConnectionLost as e:
                if ctx.state.stop_event.is_set():
                    return  # cut off because the run is stopping
                ctx.retries[server] += 1
                if ctx.faults == "original":
                    if not reconnect_as_the_original(ctx, server, e):
                        return
                    continue
                # A lossy or broken link, a server that died, or a reply that broke the protocol: the round
                # is abandoned (nothing was applied) and retried on a new connection; the other threads go
                # on, held back only by the SSP gate (and not even by that with --server-timeout-s).
                ctx.event(server, "round_abandoned", f"{e}; reconnecting to {remote.uri}", logging.WARNING, e.silence_s,
                          e.round_s)
                if not remote.reconnect(ctx.state.stop_event, ctx.round_timeout_s, 0.5 / ctx.time_scale,
                                        8.0 / ctx.time_scale):
                    return
                ctx.event(server, "reconnected", remote.uri)
                skipped = ctx.state.rejoin(server)
                if skipped is not None:
                    ctx.event(server, "rejoined", f"{skipped} rounds skipped")
    except Exception as e:  # anything else ends the run: this server's data would silently be missing
        log.error("%s", e if isinstance(e, RemoteError) else repr(e), exc_info=not isinstance(e, RemoteError))
        errors.append(f"{threading.current_thread().name}: {e}")
        ctx.state.stop()


def reconnect_as_the_original(ctx: RunContext, server: int, lost: ConnectionLost) -> bool:
    """The original's train_loop caught only the websocket timeout: close, connect again at once (again
    while connecting times out) and redo the round. Any other error left the loop: the thread ends, its
    server's rounds stop where they are (the SSP gate waits for them as the original's did) and the run
    goes on. True when the round is to be redone."""
    remote = ctx.remotes[server]
    if lost.silence_s is not None:
        ctx.event(server, "round_abandoned", f"{lost}; reconnecting at once to {remote.uri}", logging.WARNING,
                  lost.silence_s, lost.round_s)
        try:
            if not remote.reconnect_at_once(ctx.state.stop_event, ctx.round_timeout_s):
                return False
        except ConnectionLost as e:
            lost = e
        else:
            ctx.event(server, "reconnected", remote.uri)
            return True
    if not ctx.state.stop_event.is_set():
        ctx.event(server, "thread_ended", f"{lost} (not a timeout: the original's train_loop ended here)",
                  logging.WARNING, None, lost.round_s)
    remote.close()
    return False


def eval_timer(ctx: RunContext, interval_s: float, duration_s: float) -> None:
    """Time-wise snapshots at t = k * interval_s for every k * interval_s < duration_s, unless the run stops
    first. The model at the end is always scored as well (by the main thread), so a multiple of the
    interval that coincides with the end is not raced for."""
    k = 0
    while k * interval_s < duration_s:
        due = ctx.t0 + k * interval_s
        if ctx.state.stop_event.wait(max(0.0, due - time.monotonic())):
            return
        snap = ctx.state.snapshot()
        ctx.feed.submit("time", snap.weights, snap.min_round, snap.max_round, time_s=k * interval_s)
        k += 1
