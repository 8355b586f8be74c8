"""A run of the model owner on a virtual clock: the same gate, snapshots and rule as the threads of
client/rounds.py (core/state.py's ``TrainingState``), driven by events in time order, so that each round's
duration comes from a model (a simulator's formula) or from a real run's record (a replay).

A server's round goes: the gate releases it, ``gap_s`` later it takes its snapshot and trains, and
``duration_s`` after the snapshot its result is combined. At equal times updates come before snapshots
and lower server numbers first; a real run's timestamps (microseconds apart) never tie.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from asyncfl.core.state import TrainingState, may_start

APPLY, START = 0, 1  # event kinds, in the order they go at one instant


@dataclass(frozen=True)
class Timing:
    duration_s: float  # from the round's snapshot to its update
    gap_s: float = 0.0  # from the gate's release to the snapshot (work outside the gate: connecting, retries)


@dataclass(frozen=True)
class Update:
    """One applied update, as a row of rounds.csv on the virtual clock."""

    time_s: float
    server: int
    round: int
    staleness: int
    updates_behind: int
    loss: float
    start_s: float


def run(state: TrainingState, train: Callable[[int, Any], Any], timing: Callable[[int, int], Timing | None],
        duration_s: float, eval_times: list[float], on_eval: Callable[[float, Any], None],
        on_update: Callable[[Update], None]) -> int:
    """Run until ``duration_s``: ``train(server, weights)`` returns a result with ``weights``, ``n_samples``
    and ``loss``; ``timing(server, round)`` says how the round goes (None: the server has no such round and
    stops); ``on_eval(t, weights)`` is called with the global model at each of ``eval_times`` (before any
    event at that instant) and once at ``duration_s``. Returns the number of updates applied."""
    n = len(state.rounds())
    events: list = []
    order = itertools.count()
    waiting: set[int] = set(range(n))  # at the gate
    evals = sorted(t for t in eval_times if t < duration_s)
    applied = 0

    def release(server: int, now: float) -> None:
        if server not in waiting or not may_start(state.rounds(), server, state.staleness_threshold):
            return
        waiting.discard(server)
        t = timing(server, state.rounds()[server] + 1)
        if t is not None:
            heapq.heappush(events, (now + t.gap_s, START, server, next(order), t))

    for server in range(n):
        release(server, 0.0)
    while events and events[0][0] <= duration_s:
        now, kind, server, _, payload = heapq.heappop(events)
        while evals and evals[0] <= now:
            on_eval(evals.pop(0), state.snapshot().weights)
        if kind == START:
            snap = state.snapshot()
            result = train(server, snap.weights)
            heapq.heappush(events, (now + payload.duration_s, APPLY, server, next(order), (snap, result, now)))
            continue
        snap, result, started = payload
        info = state.apply(server, state.rule.prepare(snap.weights, result.weights, result.n_samples), snap)
        applied += 1
        on_update(Update(now, server, info.round, info.staleness, info.updates_behind, result.loss, started))
        waiting.add(server)
        for other in sorted(waiting) if info.min_advanced else [server]:
            release(other, now)
    for t in evals:
        on_eval(t, state.snapshot().weights)
    on_eval(duration_s, state.snapshot().weights)
    return applied
