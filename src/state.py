"""The model owner's shared training state: global model, rounds per server and the SSP gate.

One object, one lock. The lock belongs to a ``threading.Condition``; every server thread takes it to
snapshot the global model, to apply its update, and to wait at the Stale Synchronous Parallel gate:

    a thread may start a new round only while  completed[i] - min(completed) <= S

i.e. a thread starting round r = completed[i] + 1 waits while r - min(completed) > S + 1. S = 0 is
synchronous (nobody runs more than one round ahead), a huge S (9999) asynchronous. Waiters are woken
only when the smallest completed round advances, the one event that can open the gate.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from src.aggregation import StateDict, add


def may_start(completed: list[int], server: int, staleness_threshold: int) -> bool:
    """The SSP rule: may ``server`` (with ``completed[server]`` rounds done) start its next round?"""
    return completed[server] - min(completed) <= staleness_threshold


@dataclass(frozen=True)
class Snapshot:
    weights: StateDict  # never mutated: updates replace the global dict, so a snapshot needs no copy
    version: int  # global updates applied before this snapshot
    min_round: int  # smallest completed round at snapshot time
    max_round: int  # largest completed round at snapshot time


@dataclass(frozen=True)
class UpdateInfo:
    round: int  # the server's completed rounds, this one included
    staleness: int  # round - min(completed): the round gap the paper's S bounds (at most S + 1)
    updates_behind: int  # global updates applied by others since this round's snapshot
    min_round: int  # smallest completed round over all servers after this update
    max_round: int
    min_advanced: bool  # did this update raise the smallest completed round?
    weights: StateDict  # the global model right after this update


class TrainingState:
    def __init__(self, weights: StateDict, n_servers: int, staleness_threshold: int):
        if staleness_threshold < 0:
            raise ValueError("the staleness threshold must not be negative")
        self._cond = threading.Condition()  # its lock guards every field below
        self._weights = weights
        self._version = 0
        self._completed = [0] * n_servers
        self.staleness_threshold = staleness_threshold
        self.max_staleness = [0] * n_servers
        self.stop_event = threading.Event()

    def wait_turn(self, server: int) -> bool:
        """Block at the SSP gate; True when ``server`` may start its next round, False once stopped."""
        with self._cond:
            while not self.stop_event.is_set() and not may_start(self._completed, server, self.staleness_threshold):
                self._cond.wait()
            return not self.stop_event.is_set()

    def snapshot(self) -> Snapshot:
        with self._cond:
            return Snapshot(self._weights, self._version, min(self._completed), max(self._completed))

    def apply(self, server: int, update: StateDict, snapshot: Snapshot) -> UpdateInfo:
        """global += update (already scaled, see aggregation.scaled_update); the server's round completes."""
        with self._cond:
            old_min = min(self._completed)
            self._weights = add(self._weights, update)
            updates_behind = self._version - snapshot.version
            self._version += 1
            self._completed[server] += 1
            new_min, new_max = min(self._completed), max(self._completed)
            staleness = self._completed[server] - new_min
            self.max_staleness[server] = max(self.max_staleness[server], staleness)
            if new_min > old_min:
                self._cond.notify_all()
            return UpdateInfo(self._completed[server], staleness, updates_behind, new_min, new_max, new_min > old_min, self._weights)

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
