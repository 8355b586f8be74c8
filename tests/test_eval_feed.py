"""The client's feed of model snapshots to the evaluator: a busy evaluator never makes the client hold an
unbounded pile of round-wise snapshots, and time-wise snapshots are never skipped."""

import queue
import time

import torch

from asyncfl.feed import EvalFeed


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
    # Assert: three wait besides the one out; the rest are counted; time-wise ones always taken
    assert taken == [True] * 3 + [False] * 6
    assert times == [True, True]
    assert feed.skipped == 6
    assert warnings == [1]  # said once, at the first skip
    assert [(i.kind, i.epoch) for i in items] == [("epoch", 1), ("epoch", 2), ("epoch", 3), ("epoch", 4),
                                                  ("time", 10), ("time", 10)]


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
