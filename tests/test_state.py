"""The SSP gate and the shared training state."""

import random
import threading
import time

import pytest
import torch

from asyncfl.core.state import TrainingState, gate_min, may_start


def zero_model():
    return {"w": torch.zeros(3)}


@pytest.mark.parametrize(
    "completed,server,threshold,expected",
    [
        ([0, 0], 0, 0, True),  # everyone level: S=0 lets anyone start
        ([1, 0], 0, 0, False),  # one ahead: S=0 makes it wait
        ([1, 0], 1, 0, True),  # the laggard may always go
        ([7, 1], 0, 6, True),  # gap 6 <= S=6
        ([8, 1], 0, 6, False),  # gap 7 > S=6
        ([500, 0, 3], 0, 9999, True),  # asynchronous
    ],
)
def test_may_start(completed, server, threshold, expected):
    assert may_start(completed, server, threshold) is expected


def test_apply_counts_rounds_staleness_and_updates_behind():
    # Prepare
    state = TrainingState(zero_model(), 2, 9999)
    snap0 = state.snapshot()
    # Execute: server 1 applies twice before server 0 reports on its old snapshot.
    state.apply(1, {"w": torch.ones(3)}, state.snapshot())
    info1 = state.apply(1, {"w": torch.ones(3)}, state.snapshot())
    info0 = state.apply(0, {"w": torch.ones(3)}, snap0)
    # Assert
    assert (info1.round, info1.staleness, info1.updates_behind, info1.min_advanced) == (2, 2, 0, False)
    assert (info0.round, info0.staleness, info0.updates_behind, info0.min_advanced) == (1, 0, 2, True)
    assert torch.equal(state.snapshot().weights["w"], torch.full((3,), 3.0))
    assert state.rounds() == [1, 2] and state.updates() == 3 and state.max_staleness == [0, 2]
    # The first snapshot was never mutated by the updates.
    assert torch.equal(snap0.weights["w"], torch.zeros(3))


def test_gate_blocks_the_leader_until_the_minimum_advances():
    # Prepare: S=0, server 0 has finished round 1, server 1 has not.
    state = TrainingState(zero_model(), 2, 0)
    state.apply(0, {"w": torch.zeros(3)}, state.snapshot())
    passed = threading.Event()
    waiter = threading.Thread(target=lambda: state.wait_turn(0) and passed.set())
    # Execute
    waiter.start()
    blocked = not passed.wait(0.3)
    state.apply(1, {"w": torch.zeros(3)}, state.snapshot())  # the minimum advances to 1
    waiter.join(5)
    # Assert
    assert blocked
    assert passed.is_set()


def test_stop_releases_waiters_with_false():
    state = TrainingState(zero_model(), 2, 0)
    state.apply(0, {"w": torch.zeros(3)}, state.snapshot())
    result = []
    waiter = threading.Thread(target=lambda: result.append(state.wait_turn(0)))
    waiter.start()
    state.stop()
    waiter.join(5)
    assert result == [False]


@pytest.mark.parametrize("threshold", [0, 2, 5])
def test_concurrent_servers_never_exceed_the_threshold(threshold):
    # Prepare: 4 threads of very different speeds race through 60 rounds each.
    n, rounds = 4, 60
    state = TrainingState(zero_model(), n, threshold)
    gaps, lock = [], threading.Lock()

    def server(i):
        rng = random.Random(i)
        for _ in range(rounds):
            assert state.wait_turn(i)
            snap = state.snapshot()
            for _ in range(rng.randint(0, 200) * (i + 1)):  # uneven work, no sleeping
                pass
            info = state.apply(i, {"w": torch.zeros(3)}, snap)
            with lock:
                gaps.append(info.max_round - info.min_round)

    # Execute
    threads = [threading.Thread(target=server, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # Assert
    assert state.rounds() == [rounds] * n
    assert max(gaps) <= threshold + 1
    assert max(state.max_staleness) <= threshold + 1


def test_a_silent_server_is_left_out_of_the_gate_and_rejoins_at_the_others_round():
    # Prepare: S=0, three servers; server 2 takes a round and goes silent.
    state = TrainingState(zero_model(), 3, 0)
    for s in (0, 1, 2):
        assert state.wait_turn(s)
    state.apply(0, {"w": torch.ones(3)}, state.snapshot())
    state.apply(1, {"w": torch.ones(3)}, state.snapshot())
    t_busy = time.monotonic()
    # Execute / Assert: before the timeout nobody is left out and server 0 must wait for server 2.
    assert state.leave_out_silent(10.0, now=t_busy + 5) == []
    assert not may_start(state.rounds(), 0, 0, state.left_out())
    assert state.leave_out_silent(10.0, now=t_busy + 11) == [2]
    assert state.leave_out_silent(10.0, now=t_busy + 12) == []  # reported once
    # Left out: servers 0 and 1 go on for 5 rounds in step.
    for _ in range(5):
        for s in (0, 1):
            assert state.wait_turn(s)
            state.apply(s, {"w": torch.ones(3)}, state.snapshot())
    assert state.rounds() == [6, 6, 0]
    # Server 2 answers again: it rejoins at the others' smallest round, its missed rounds counted as skipped.
    assert state.rejoin(2) == 6
    assert state.rounds() == [6, 6, 6] and state.skipped == [0, 0, 6] and state.left_out() == frozenset()
    assert state.rejoin(2) is None  # already back


def test_a_late_reply_brings_a_left_out_server_back():
    state = TrainingState(zero_model(), 2, 0)
    snap = state.snapshot()
    assert state.wait_turn(1)
    assert state.leave_out_silent(1.0, now=time.monotonic() + 2) == [1]
    for _ in range(3):
        assert state.wait_turn(0)
        state.apply(0, {"w": torch.ones(3)}, state.snapshot())
    info = state.apply(1, {"w": torch.ones(3)}, snap)
    assert (info.rejoined, info.round, info.updates_behind) == (3, 4, 3)
    assert state.rounds() == [3, 4]


def test_gate_min_ignores_left_out_servers_unless_all_are():
    assert gate_min([5, 2, 9], frozenset({1})) == 5
    assert gate_min([5, 2, 9], frozenset({0, 1, 2})) == 2
