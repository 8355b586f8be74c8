"""The model owner's side of evaluation: snapshots to the evaluator process, scores back to the log.

``EvalFeed`` hands snapshots (with the time they were taken) to the evaluator one at a time from a thread
of its own, holding a bounded backlog of round-wise ones; ``ScoreReport`` prints the scores as they come
back. The evaluator process itself is client/evaluator.py.
"""

from __future__ import annotations

import collections
import logging
import queue as queue_module
import threading
import time

from safetensors.torch import save as st_save

from asyncfl.client.evaluator import EvalRequest, format_score
from asyncfl.client.live import LiveStatus

log = logging.getLogger("asyncfl.client")


class EvalFeed:
    """Hands model snapshots, stamped with the time they were taken, to the evaluator one at a time.

    The backlog waits here as references to immutable snapshots (serialised only when sent), so that an
    interrupted run can drop it at once instead of waiting for the evaluator to read through it. A thread
    named eval-feed does the sending: time-wise snapshots go ahead of waiting round-wise ones, and with
    ``free`` (a semaphore the evaluator releases after each request) only one request is out at a time, so
    a time-wise snapshot never queues behind more than the one being scored. While training runs, a
    round-wise snapshot is sent no earlier than ``epoch_ok_at.value`` (time.monotonic(), set by the
    evaluator to hold its share of a core); once ``finish`` is called nothing is held back."""

    def __init__(self, queue, t0: float, max_epoch_backlog: int = 0, on_first_skip=None, latest_only: bool = False,
                 free=None, epoch_ok_at=None):
        self.queue, self.t0 = queue, t0
        self.free, self.epoch_ok_at = free, epoch_ok_at
        self.max_epoch_backlog = max_epoch_backlog  # round-wise snapshots waiting at most (0 = no limit)
        # Round-wise snapshots at the pace the evaluator holds: a new one replaces the one still waiting.
        self.latest_only = latest_only
        self.superseded = 0  # round-wise snapshots replaced by a newer one before the evaluator was free
        self.on_first_skip = on_first_skip  # called once, by the thread whose snapshot is the first skipped
        self.submitted = 0  # requests handed to the evaluator
        self.dropped = 0  # snapshots never sent: dropped on an interrupt
        self.skipped = 0  # round-wise snapshots not taken: the backlog was full
        self._epoch_pending = 0
        self.closed = False  # the evaluator is gone: nothing more is taken or sent
        self._pending: collections.deque = collections.deque()
        self._done = False  # no more snapshots will come: send the end marker once the backlog is out
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._send_loop, name="eval-feed", daemon=True)
        self._thread.start()

    def submit(self, kind: str, weights, epoch: int, max_round: int, time_s: float | None = None,
               final: bool = False) -> bool:
        """Queue a snapshot; False if it was skipped: a round-wise one when ``max_epoch_backlog`` of them
        already wait. (A slow evaluator then scores round-wise snapshots at the pace it can, instead of
        the client holding one model per advance: 4 servers at the defaults piled up 4 MB a second.)
        Time-wise snapshots, one per interval, are always taken."""
        t = time.monotonic() - self.t0 if time_s is None else time_s
        with self._cond:
            if self.closed:
                return False
            if kind == "epoch" and self.latest_only and self._epoch_pending:
                newest = max(i for i, entry in enumerate(self._pending) if entry[0] == "epoch")
                self._pending[newest] = (kind, t, epoch, max_round, weights, final)
                self.superseded += 1
                return True
            full = kind == "epoch" and self.max_epoch_backlog and self._epoch_pending >= self.max_epoch_backlog
            if full:
                self.skipped += 1
                first = self.skipped == 1
            else:
                self._epoch_pending += kind == "epoch"
                self._pending.append((kind, t, epoch, max_round, weights, final))
                self._cond.notify()
        if full and first and self.on_first_skip:
            self.on_first_skip()
        return not full

    def drop_backlog(self) -> None:
        with self._cond:
            self.dropped += len(self._pending)
            self._pending.clear()
            self._epoch_pending = 0

    def backlog(self) -> int:
        with self._cond:
            return len(self._pending)

    def finish(self) -> None:
        """No more snapshots: the feed sends the end marker after the backlog (the evaluator then exits)."""
        with self._cond:
            self._done = True
            self._cond.notify()

    def close(self) -> None:
        """The evaluator died: stop taking snapshots, and never wait on its queue again."""
        with self._cond:
            self.closed = True
            self.dropped += len(self._pending)
            self._pending.clear()
            self._epoch_pending = 0
            self._cond.notify()
        self.queue.cancel_join_thread()

    def _take(self):
        """The next entry to send (under the lock), None when there is nothing to send yet, or "end"."""
        for i, entry in enumerate(self._pending):
            if entry[0] == "time":
                del self._pending[i]
                return entry
        if self._pending:
            wait_s = 0.0 if self._done or self.epoch_ok_at is None else self.epoch_ok_at.value - time.monotonic()
            if wait_s > 0:
                self._cond.wait(wait_s)  # a time-wise snapshot may arrive meanwhile: look again
                return None
            self._epoch_pending -= 1
            return self._pending.popleft()
        if self._done:
            return "end"
        self._cond.wait()
        return None

    def _send_loop(self) -> None:
        while True:
            # The evaluator's answer to the previous request comes first: what is sent next, and when the
            # next round-wise snapshot may go, is decided only once it is free.
            while self.free is not None and not self.closed and not self.free.acquire(timeout=0.5):
                pass
            with self._cond:
                entry = None
                while entry is None and not self.closed:
                    entry = self._take()
                if self.closed:
                    return
            # Serialised outside the lock: server threads submit under it from the round loop.
            item = None if entry == "end" else EvalRequest(*entry[:4], st_save(entry[4]), entry[5])
            while not self.closed:
                try:
                    self.queue.put(item, timeout=0.5)
                    break
                except queue_module.Full:
                    continue
            if item is None:
                return
            with self._cond:
                self.submitted += 1


class ScoreReport:
    """Prints the evaluator's scores as they come back (the evaluator itself writes the CSVs)."""

    def __init__(self, scores, live: LiveStatus, verbose: bool = True):
        self.scores, self.live, self.verbose = scores, live, verbose
        self._latest_time_s = -1.0  # time of the newest snapshot whose score the live line shows
        self.count = 0  # requests answered, scored or (on an interrupt) skipped
        self.skipped = 0

    def drain(self) -> None:
        while True:
            try:
                req, f1 = self.scores.get_nowait()
            except queue_module.Empty:
                return
            self.count += 1
            if f1 is None:
                self.skipped += 1
                continue
            if req.time_s >= self._latest_time_s:  # scores can come back out of order: show the newest
                self._latest_time_s, self.live.latest_f1 = req.time_s, f1
            if req.kind == "time" or self.verbose:  # round-wise scores are all in f1_epoch.csv anyway
                log.info("%s", format_score(req, f1), extra={"who": "evaluator"})
