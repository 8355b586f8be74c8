"""The round loop (client/rounds.py) with data owners in this process (tests/doubles.py): every rule, the SSP gate, a
lost round, leaving a silent server out and taking it back, and the evaluation feed; no sockets, no
timing thresholds."""

import queue
import threading
import time

import numpy as np
import pytest
import torch

from asyncfl.client.feed import EvalFeed
from asyncfl.client.remote import ConnectionLost
from asyncfl.client.rounds import RunContext, server_loop
from asyncfl.core import rules
from asyncfl.core.model import flatten, initial_weights
from asyncfl.core.protocol import TrainConfig
from asyncfl.core.schema import EVENTS_HEADER, ROUNDS_HEADER
from asyncfl.core.state import TrainingState
from asyncfl.core.task import ShardTrainer
from asyncfl.process.runlog import CsvLog
from asyncfl.settings import ClientArgs
from tests.doubles import LocalServer
from tests.helpers import read_csv

DEADLINE_S = 30.0


def shard(i: int) -> ShardTrainer:
    rng = np.random.default_rng(i)
    images = torch.from_numpy(rng.standard_normal((64, 1, 28, 28)).astype(np.float32))
    return ShardTrainer(f"server-{i}", "toy", images, torch.from_numpy(rng.integers(0, 10, 64)), seed=i)


class Harness:
    """Servers' threads running the real round loop against local remotes, until every server has
    completed ``target`` rounds (a worker's next fit then stops the run)."""

    def __init__(self, tmp_path, n: int, rule, staleness: int, target: int, hooks: dict | None = None,
                 faults: str = "modern"):
        self.target, self.errors, self.epochs = target, [], []
        self.state = TrainingState(flatten(initial_weights(0)), n, staleness, rule)
        self.initial = self.state.snapshot().weights
        hooks = hooks or {}
        self.remotes = [LocalServer(shard(i), self._hook(hooks.get(i))) for i in range(n)]
        self.queue = queue.Queue(maxsize=1)
        self.feed = EvalFeed(self.queue, time.monotonic())
        self.ctx = RunContext(self.state, self.remotes, TrainConfig(batch_size=8), "toy",
                              CsvLog(tmp_path / "rounds.csv", ROUNDS_HEADER), CsvLog(tmp_path / "events.csv", EVENTS_HEADER),
                              self.feed, 1, 60.0, 1.0, time.monotonic(), retries=[0] * n, faults=faults)
        self.tmp_path = tmp_path
        self.threads = [threading.Thread(target=server_loop, args=(self.ctx, i, self.errors)) for i in range(n)]
        self.consumer = threading.Thread(target=self._consume, daemon=True)

    def _hook(self, inner):
        def before_fit(number: int) -> None:
            if inner is not None:
                inner(number)
            if min(self.state.rounds()) >= self.target:
                self.state.stop()
        return before_fit

    def _consume(self) -> None:
        while (req := self.queue.get(timeout=DEADLINE_S)) is not None:
            if req.kind == "epoch":
                self.epochs.append(req.epoch)

    def start(self):
        self.consumer.start()
        for t in self.threads:
            t.start()
        return self

    def finish(self):
        for t in self.threads:
            t.join(DEADLINE_S)
            assert not t.is_alive(), "a server thread did not stop"
        self.feed.finish()
        self.consumer.join(DEADLINE_S)
        self.ctx.rounds_log.close()
        self.ctx.events_log.close()
        return read_csv(self.tmp_path / "rounds.csv"), read_csv(self.tmp_path / "events.csv")


def wait_until(predicate, what: str) -> None:
    """Poll a condition of the shared state (it has no signal of its own) up to the deadline."""
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


CASES = [(name, s) for name in rules.NAMES for s in (0, 6, 9999) if rules.get(name).has_threshold or s == 0]


@pytest.mark.parametrize("rule,staleness", CASES)
def test_every_rule_under_every_gate_keeps_its_invariants(tmp_path, rule, staleness):
    # Execute: 3 servers until each has 8 rounds, each registered rule with its default options.
    h = Harness(tmp_path, 3, rules.build(ClientArgs(aggregation=rule), 3), staleness, 8).start()
    rows, events = h.finish()
    # Assert: no errors, the gate's bound held on every update, and the global model trained.
    assert h.errors == [] and events == []
    rounds = h.state.rounds()
    assert min(rounds) >= 8 and len(rows) == sum(rounds)
    assert max(int(r["staleness"]) for r in rows) <= staleness + 1
    if staleness == 0:
        assert max(rounds) - min(rounds) <= 1
    results = sum(rounds)
    expected_updates = {"ssp": results, "fedasync": results, "fedbuff": results // 4, "fedavg": min(rounds)}
    if rule in expected_updates:
        assert h.state.updates() == expected_updates[rule]
    else:  # a rule added since: it applied something, and never more updates than results
        assert 0 < h.state.updates() <= results
    final = h.state.snapshot().weights
    assert any(not torch.equal(final[k], h.initial[k]) for k in final)
    assert all(torch.isfinite(v).all() for v in final.values())


def test_the_gate_holds_the_others_at_s_plus_one_rounds_ahead(tmp_path):
    # Prepare: server 2 blocks in its second round, S=2.
    release = threading.Event()
    h = Harness(tmp_path, 3, rules.get("ssp")(3), 2, 8,
                hooks={2: lambda number: number == 2 and release.wait(DEADLINE_S)}).start()
    # Execute: the others run until the gate stops them.
    wait_until(lambda: h.state.rounds()[:2] == [4, 4], "servers 0 and 1 to reach round 4")
    # Assert: they stopped at completed - min = S + 1 = 3 ahead and started no fifth round.
    held = (h.state.rounds(), h.remotes[0].fits_started, h.remotes[1].fits_started)
    release.set()
    rows, _ = h.finish()
    assert held == ([4, 4, 1], 4, 4)
    assert h.errors == [] and max(int(r["staleness"]) for r in rows) <= 3


def test_a_lost_round_is_abandoned_and_retried(tmp_path):
    def lose_third(number: int) -> None:
        if number == 3:
            raise ConnectionLost("fit: simulated loss")

    h = Harness(tmp_path, 2, rules.get("ssp")(2), 9999, 6, hooks={0: lose_third}).start()
    rows, events = h.finish()
    assert h.errors == [] and h.ctx.retries == [1, 0] and h.remotes[0].reconnects == 1
    assert [e["event"] for e in events] == ["round_abandoned", "reconnected"]
    assert "simulated loss" in events[0]["detail"] and min(h.state.rounds()) >= 6


def test_faults_original_reconnects_at_once_after_a_timeout_and_ends_the_thread_on_any_other_error(tmp_path):
    # Prepare: server 0's third round times out (6 s of silence); server 1's fourth is reset.
    def time_out_third(number: int) -> None:
        if number == 3:
            raise ConnectionLost("fit: no byte received for 6 s (websocket timeout)", silence_s=6.0, round_s=6.0)

    def reset_fourth(number: int) -> None:
        if number == 4:
            raise ConnectionLost("fit: ConnectionResetError: reset by peer", round_s=0.1)

    holder = {}

    def stop_at_ten(number: int) -> None:  # server 2 ends the run: server 1's rounds stop at 3
        if number > 10:
            holder["h"].state.stop()

    h = Harness(tmp_path, 3, rules.get("ssp")(3), 9999, 10**6, faults="original",
                hooks={0: time_out_third, 1: reset_fourth, 2: stop_at_ten})
    holder["h"] = h
    # Execute
    h.start()
    rows, events = h.finish()
    # Assert: the timeout was followed by a reconnection at once and the round redone; the reset ended
    # server 1's thread (an event, not an error of the run) and the others went on past it.
    assert h.errors == []
    kinds = [(e["server"], e["event"]) for e in events]
    assert kinds.count(("0", "round_abandoned")) == 1 and kinds.count(("0", "reconnected")) == 1
    assert ("1", "thread_ended") in kinds and ("1", "round_abandoned") not in kinds
    assert h.remotes[0].reconnects == 1 and h.remotes[1].reconnects == 0
    rounds = h.state.rounds()
    assert rounds[1] == 3 and rounds[2] >= 10 and rounds[0] >= 5
    assert h.remotes[1].fits_started == 4  # no fit after the thread ended


def test_a_silent_server_is_left_out_and_rejoins_at_the_others_round(tmp_path):
    # Prepare: S=0; server 2 goes silent in its second round.
    release = threading.Event()
    h = Harness(tmp_path, 3, rules.get("ssp")(3), 0, 6,
                hooks={2: lambda number: number == 2 and release.wait(DEADLINE_S)}).start()
    wait_until(lambda: h.remotes[2].fits_started == 2 and h.state.rounds() == [2, 2, 1],
               "server 2 to go silent and the others to wait for it at the gate")
    # Execute: a clock 100 s later says it has been silent too long; the others go on without it.
    assert h.state.leave_out_silent(1.0, now=time.monotonic() + 100) == [2]
    wait_until(lambda: min(h.state.rounds()[:2]) >= 5, "servers 0 and 1 to go on")
    release.set()
    rows, events = h.finish()
    # Assert: it rejoined at the others' smallest round, the rounds it missed counted as skipped.
    assert h.errors == []
    rejoined = [e for e in events if e["event"] == "rejoined"]
    assert len(rejoined) == 1 and rejoined[0]["server"] == "2"
    assert h.state.skipped[2] >= 3 and h.state.left_out() == frozenset()


def test_the_feed_gets_a_snapshot_at_every_advance_of_the_slowest_server(tmp_path):
    h = Harness(tmp_path, 3, rules.get("ssp")(3), 9999, 10).start()
    h.finish()
    assert h.epochs == list(range(1, min(h.state.rounds()) + 1))


def test_the_round_timers_count_every_round_and_split_its_time_into_gate_and_fit(tmp_path):
    # Arrange: S=0, server 0 slow (20 ms before each fit): the others wait for it at the gate
    from asyncfl.client.profiling import RoundTimers

    h = Harness(tmp_path, 3, rules.build(ClientArgs(aggregation="ssp"), 3), 0, target=6, hooks={0: lambda _: time.sleep(0.02)})
    h.ctx.timers = RoundTimers(3)
    # Act
    h.start()
    rows, _ = h.finish()
    h.ctx.timers.write_csv(tmp_path / "yappi.csv", ["server-0", "server-1", "server-2"], h.state.rounds(),
                           h.state.max_staleness)
    prof = read_csv(tmp_path / "yappi.csv")
    # Assert: a loop call per round (and the last one that found the run stopped), each split into gate and fit
    calls = h.ctx.timers.calls
    for i, row in enumerate(prof):
        assert calls["loop"][i] >= h.state.rounds()[i] and calls["gate"][i] == calls["loop"][i]
        assert float(row["loop_total_s"]) >= float(row["fit_total_s"]) + float(row["gate_total_s"]) - 1e-6
    assert float(prof[0]["fit_mean_s"]) >= 0.02  # the slow one's fits hold its sleep
    assert min(float(prof[i]["gate_frac"]) for i in (1, 2)) > float(prof[0]["gate_frac"])  # the others waited
