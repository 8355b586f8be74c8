"""The model owner's shared training state: global model, rounds per server and the SSP gate.

One object, one lock. The lock belongs to a ``threading.Condition``; every server thread takes it to
snapshot the global model, to apply its update, and to wait at the Stale Synchronous Parallel gate:

    a thread may start a new round only while  completed[i] - min(completed) <= S

i.e. a thread starting round r = completed[i] + 1 waits while r - min(completed) > S + 1. S = 0 is
synchronous (nobody runs more than one round ahead), a huge S (9999) asynchronous. Waiters are woken
only when the smallest completed round advances, the one event that can open the gate.

A server whose round has gone unanswered for longer than a timeout can be left out of that minimum
(``leave_out_silent``), so that the others go on without it. When it answers again it rejoins at the
others' smallest round: the rounds it missed are counted as skipped, and it does not hold everyone back
while it catches up.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from asyncfl.core.rules import Rule, StateDict
from asyncfl.core.rules.ssp import SSPRule


def may_start(completed: list[int], server: int, staleness_threshold: int, left_out: frozenset[int] = frozenset()) -> bool:
    """The SSP rule: may ``server`` (with ``completed[server]`` rounds done) start its next round? Servers
    in ``left_out`` (silent for too long, see ``TrainingState.leave_out_silent``) do not count."""
    return completed[server] - gate_min(completed, left_out) <= staleness_threshold


def gate_min(completed: list[int], left_out: frozenset[int] = frozenset()) -> int:
    """The smallest completed round among the servers the gate waits for (all, if all are left out)."""
    present = [c for i, c in enumerate(completed) if i not in left_out]
    return min(present or completed)


@dataclass(frozen=True)
class Snapshot:
    weights: StateDict  # never mutated: updates replace the global dict, so a snapshot needs no copy
    version: int  # global updates applied before this snapshot
    min_round: int  # smallest completed round at snapshot time
    max_round: int  # largest completed round at snapshot time
    taken_at: float = 0.0  # time.monotonic() under the lock: snapshots and updates are ordered by it


@dataclass(frozen=True)
class UpdateInfo:
    round: int  # the server's completed rounds, this one included
    staleness: int  # round - min(completed): the round gap the paper's S bounds (at most S + 1)
    updates_behind: int  # global updates applied by others since this round's snapshot
    min_round: int  # smallest completed round over all servers after this update
    max_round: int
    min_advanced: bool  # did this update raise the smallest completed round?
    weights: StateDict  # the global model right after this update
    rejoined: int | None = None  # rounds skipped if this update brought a left-out server back, else None
    applied: bool = True  # did the global model change (False: the rule buffered the result)
    applied_at: float = 0.0  # time.monotonic() under the lock (see Snapshot.taken_at)


class TrainingState:
    def __init__(self, weights: StateDict, n_servers: int, staleness_threshold: int, rule: Rule | None = None):
        if staleness_threshold < 0:
            raise ValueError("the staleness threshold must not be negative")
        self.rule = rule or SSPRule(n_servers)  # how a result changes the global model (core/rules/)
        self._cond = threading.Condition()  # its lock guards every field below, and the rule's buffers
        self._weights = weights
        self._version = 0
        self._completed = [0] * n_servers
        self.staleness_threshold = staleness_threshold
        self.max_staleness = [0] * n_servers
        self.skipped = [0] * n_servers  # rounds fast-forwarded on rejoining after being left out
        self._left_out: frozenset[int] = frozenset()
        self._busy_since: list[float | None] = [None] * n_servers  # when the round out now started; None at the gate
        self.stop_event = threading.Event()

    def wait_turn(self, server: int) -> bool:
        """Block at the SSP gate; True when ``server`` may start its next round, False once stopped."""
        with self._cond:
            while not self.stop_event.is_set() and not may_start(self._completed, server, self.staleness_threshold,
                                                                 self._left_out):
                self._cond.wait()
            if self._busy_since[server] is None:
                self._busy_since[server] = time.monotonic()
            return not self.stop_event.is_set()

    def snapshot(self) -> Snapshot:
        with self._cond:
            return Snapshot(self._weights, self._version, gate_min(self._completed, self._left_out), max(self._completed),
                            time.monotonic())

    def apply(self, server: int, prepared, snapshot: Snapshot) -> UpdateInfo:
        """Combine a server's result (``rule.prepare``'s output) into the global model under the lock (a
        buffering rule may hold it for later); the server's round completes."""
        with self._cond:
            rejoined = self._rejoin(server)
            old_min = gate_min(self._completed, self._left_out)
            updates_behind = self._version - snapshot.version
            new_weights = self.rule.combine(self._weights, prepared, updates_behind)
            if new_weights is not None:
                self._weights = new_weights
                self._version += 1
            self._completed[server] += 1
            self._busy_since[server] = None
            new_min, new_max = gate_min(self._completed, self._left_out), max(self._completed)
            staleness = self._completed[server] - new_min
            self.max_staleness[server] = max(self.max_staleness[server], staleness)
            if new_min > old_min:
                self._cond.notify_all()
            return UpdateInfo(self._completed[server], staleness, updates_behind, new_min, new_max, new_min > old_min,
                              self._weights, rejoined, new_weights is not None, time.monotonic())

    def leave_out_silent(self, timeout_s: float, now: float | None = None) -> list[int]:
        """Leave out of the gate's minimum every server whose round has been out for more than
        ``timeout_s``; returns the servers newly left out."""
        now = time.monotonic() if now is None else now
        with self._cond:
            silent = [i for i, t in enumerate(self._busy_since)
                      if t is not None and now - t > timeout_s and i not in self._left_out]
            if silent:
                old_min = gate_min(self._completed, self._left_out)
                self._left_out = self._left_out | frozenset(silent)
                if gate_min(self._completed, self._left_out) > old_min:
                    self._cond.notify_all()
            return silent

    def rejoin(self, server: int) -> int | None:
        """``server`` answers again (it reconnected): its silence ends, and if it was left out it rejoins
        (see ``_rejoin``)."""
        with self._cond:
            self._busy_since[server] = None
            return self._rejoin(server)

    def _rejoin(self, server: int) -> int | None:
        """Take a left-out server back into the gate at the others' smallest round (never below the one it
        had, so the minimum cannot drop). Returns the rounds skipped, or None if it was not left out."""
        if server not in self._left_out:
            return None
        self._left_out = self._left_out - {server}
        skipped = max(0, gate_min(self._completed, self._left_out | {server}) - self._completed[server])
        self._completed[server] += skipped
        self.skipped[server] += skipped
        return skipped

    def left_out(self) -> frozenset[int]:
        with self._cond:
            return self._left_out

    def rounds(self) -> list[int]:
        with self._cond:
            return list(self._completed)

    def updates(self) -> int:
        with self._cond:
            return self._version

    def stop(self) -> None:
        """Stop every thread: set the event and wake whoever waits at the gate."""
        self.stop_event.set()
        with self._cond:
            self._cond.notify_all()
