"""Timers of the model owner's connections: a ``Watchdog`` that cuts off a request past its deadline, and
the ``BackoffSampler`` that notes each request's TCP retransmission backoff while it is out
(client/remote.py uses both)."""

from __future__ import annotations

import threading
import time


class Watchdog:
    """One long-lived thread that calls ``on_expire`` when an armed deadline passes. Arming and disarming
    cost a lock each; a ``threading.Timer`` per round would start an OS thread per round.
    The thread is woken only when a deadline comes earlier than the one it sleeps until: with a fixed
    timeout every new deadline is later, so it sleeps through round after round (waking it each round
    cost two thread switches and a GIL hand-over per round)."""

    def __init__(self, on_expire, name: str):
        self._on_expire = on_expire
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._sleeping_until: float | None = None  # None: until notified
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def arm(self, timeout_s: float) -> None:
        with self._cond:
            self._deadline = time.monotonic() + timeout_s
            if self._sleeping_until is None or self._deadline < self._sleeping_until:
                self._cond.notify()

    def disarm(self) -> None:
        with self._cond:
            self._deadline = None  # the thread wakes at the old deadline, finds none (or a later one), sleeps again

    def _run(self) -> None:
        with self._cond:
            while True:
                if self._deadline is None:
                    self._sleeping_until = None
                    self._cond.wait()
                elif time.monotonic() >= self._deadline:
                    self._deadline = None
                    self._on_expire()
                else:
                    self._sleeping_until = self._deadline
                    self._cond.wait(self._deadline - time.monotonic())


class BackoffSampler:
    """One thread that samples the RTO backoff of each given remote's request in flight every ``tick_s``
    (the client passes the links' minimum RTO: a backoff that lasts, because the retransmission was lost
    too, lasts at least twice that). The client leaves out remotes whose weights go through shared memory
    (loopback, no emulated link): their rounds' few bytes of TCP cannot stall, and the thread's wake-ups
    would cost the fastest path."""

    def __init__(self, remotes: list, tick_s: float):
        self._workers = list(remotes)
        self._tick_s = tick_s
        self.native_id: int | None = None  # the thread's, once started (its CPU time is counted apart)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="backoff-sampler", daemon=True)

    def start(self) -> "BackoffSampler":
        if self._workers:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        self.native_id = threading.get_native_id()
        while not self._stop.wait(self._tick_s):
            for w in self._workers:
                w.sample_backoff()
