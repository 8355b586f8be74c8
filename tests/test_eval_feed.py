"""The client's feed of model snapshots to the evaluator: a busy evaluator never makes the client hold an
unbounded pile of round-wise snapshots, and time-wise snapshots are never skipped."""

import multiprocessing as mp
import queue
import threading
import time

import pytest
import torch
from safetensors.torch import save as st_save

from asyncfl.client.evaluator import EvalRequest, EvaluatorArgs, run_evaluator
from asyncfl.client.feed import EvalFeed
from asyncfl.core.model import Net


def blocked_feed(max_epoch_backlog: int, on_first_skip=None) -> tuple[EvalFeed, queue.Queue]:
    """A feed whose evaluator is busy: its one-slot queue is full, so the feed's sender blocks."""
    q: queue.Queue = queue.Queue(maxsize=1)
    q.put("busy")
    return EvalFeed(q, time.monotonic(), max_epoch_backlog, on_first_skip), q


def wait_for(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def received(q: queue.Queue) -> list:
    """Everything the feed sends after the 'busy' item, up to its end marker."""
    assert q.get(timeout=10) == "busy"
    out = []
    while (item := q.get(timeout=10)) is not None:
        out.append(item)
    return out


def test_round_wise_snapshots_beyond_the_backlog_are_skipped_and_counted():
    # Prepare: the sender holds the first snapshot, waiting for the evaluator
    warnings = []
    feed, q = blocked_feed(max_epoch_backlog=3, on_first_skip=lambda: warnings.append(feed.skipped))
    weights = {"w": torch.zeros(2)}
    assert feed.submit("epoch", weights, 1, 1)
    wait_for(lambda: feed.backlog() == 0)
    # Execute: nine more round-wise and two time-wise snapshots while the evaluator is busy
    taken = [feed.submit("epoch", weights, r, r) for r in range(2, 11)]
    times = [feed.submit("time", weights, 10, 10, time_s=t) for t in (1.0, 2.0)]
    feed.finish()
    items = received(q)
    # Assert: three wait besides the one out; the rest are counted; time-wise ones always taken, and sent
    # ahead of the round-wise ones that were waiting
    assert taken == [True] * 3 + [False] * 6
    assert times == [True, True]
    assert feed.skipped == 6
    assert warnings == [1]  # said once, at the first skip
    assert [(i.kind, i.epoch, i.time_s) for i in items][:3] == [("epoch", 1, items[0].time_s), ("time", 10, 1.0),
                                                                ("time", 10, 2.0)]
    assert [(i.kind, i.epoch) for i in items[3:]] == [("epoch", 2), ("epoch", 3), ("epoch", 4)]


def test_room_in_the_backlog_is_taken_again_once_the_evaluator_catches_up():
    feed, q = blocked_feed(max_epoch_backlog=1)
    weights = {"w": torch.zeros(2)}
    feed.submit("epoch", weights, 1, 1)
    wait_for(lambda: feed.backlog() == 0)
    assert feed.submit("epoch", weights, 2, 2)
    assert not feed.submit("epoch", weights, 3, 3)
    # Execute: the evaluator takes what waited
    assert q.get(timeout=10) == "busy"
    wait_for(lambda: feed.backlog() == 0)
    # Assert
    assert feed.submit("epoch", weights, 4, 4)


def test_without_a_limit_every_snapshot_is_taken():
    feed, q = blocked_feed(max_epoch_backlog=0)
    weights = {"w": torch.zeros(2)}
    assert all(feed.submit("epoch", weights, r, r) for r in range(1, 101))
    feed.finish()
    assert len(received(q)) == 100 and feed.skipped == 0


class Clock:
    """Stands in for the evaluator's shared value: when the next round-wise snapshot may go."""

    def __init__(self, value: float):
        self.value = value


def test_a_resting_evaluator_gets_time_wise_snapshots_at_once_and_round_wise_ones_when_rested():
    # Prepare: the evaluator is free but rests from round-wise scoring for the next 60 s
    q: queue.Queue = queue.Queue()
    free = threading.Semaphore(1)
    rest = Clock(time.monotonic() + 60.0)
    feed = EvalFeed(q, time.monotonic(), latest_only=True, free=free, epoch_ok_at=rest)
    weights = {"w": torch.zeros(2)}
    # Execute: two round-wise snapshots (the newer replaces the older), then a time-wise one
    feed.submit("epoch", weights, 1, 1)
    feed.submit("epoch", weights, 2, 2)
    feed.submit("time", weights, 2, 2, time_s=15.0)
    first = q.get(timeout=10)
    # Assert: the time-wise one went at once; nothing more goes while the evaluator has not answered
    assert (first.kind, first.time_s) == ("time", 15.0)
    with pytest.raises(queue.Empty):
        q.get(timeout=0.3)
    # Execute: the evaluator answers; the round-wise one still waits for the rest to end
    free.release()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.3)
    # Execute: training ends: nothing is held back any more
    feed.finish()
    rest_items = [q.get(timeout=10)]
    free.release()
    rest_items.append(q.get(timeout=10))
    # Assert: the newest round-wise snapshot, then the end marker
    assert (rest_items[0].kind, rest_items[0].epoch) == ("epoch", 2) and rest_items[1] is None
    assert feed.superseded == 1


def test_the_evaluator_rests_in_proportion_to_the_cpu_a_round_wise_score_took(tmp_path):
    # Prepare: a real evaluator process, limited to 1% of a core for round-wise scoring
    ctx = mp.get_context("fork")
    ev = EvaluatorArgs.open(ctx, "mnist-5k", "data", nice=0, n_samples=200, cpu_frac=0.01)
    ev.free = free = ctx.Semaphore(0)
    requests, scores, ready, rest = ev.requests, ev.scores, ev.ready, ev.epoch_ok_at
    proc = ctx.Process(target=run_evaluator, args=(ev,), daemon=True)
    proc.start()
    try:
        assert ready.wait(60)
        requests.put(str(tmp_path))
        snapshot = st_save({k: v.contiguous() for k, v in Net().state_dict().items()})
        for kind in ("epoch", "time"):
            before = time.monotonic()
            requests.put(EvalRequest(kind, 1.0, 1, 1, snapshot))
            req, f1 = scores.get(timeout=60)
            # Assert: answered, and free released after each request
            assert req.kind == kind and 0.0 <= f1 <= 1.0
            assert free.acquire(timeout=10)
            if kind == "epoch":
                rested_until = rest.value
                # a score takes milliseconds of CPU: at 1% of a core the next waits about 100 times as long
                assert rested_until - before > 0.05
            else:
                assert rest.value == rested_until  # a time-wise score does not move the rest
        requests.put(None)
        proc.join(30)
        assert proc.exitcode == 0
    finally:
        if proc.is_alive():
            proc.kill()
