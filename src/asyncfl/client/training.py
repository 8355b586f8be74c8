"""One training of the model owner, from the first round to the written results: the server threads and
the time-wise timer started, the main thread's monitor loop (scores, live line, servers left out, a
dead evaluator, signals), the stop, the final model scored and config.json's ``finished`` record.

main.py builds a ``Training`` once the servers are connected and the evaluator is ready, and calls
``run()``.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from safetensors.torch import save_file

from asyncfl.client import profiling
from asyncfl.client.evaluator import EvaluatorArgs
from asyncfl.client.feed import EvalFeed, ScoreReport
from asyncfl.client.live import LiveStatus
from asyncfl.client.remote import WEBSOCKET, RemoteServer
from asyncfl.client.rounds import RunContext, eval_timer, server_loop
from asyncfl.client.runfolder import local_processes
from asyncfl.client.watchdog import BackoffSampler
from asyncfl.core import schema
from asyncfl.core.model import flatten, initial_weights, non_finite
from asyncfl.core.protocol import TrainConfig
from asyncfl.core.state import TrainingState
from asyncfl.process import cpu
from asyncfl.process.runlog import CsvLog, write_json
from asyncfl.settings import ClientArgs

log = logging.getLogger("asyncfl.client")


@dataclass
class Training:
    args: ClientArgs  # settled (every [regime] field filled in)
    regime: object  # core.regime.Regime
    remotes: list[RemoteServer]  # connected, in server order
    infos: list[dict]  # their hello replies
    rule: object  # core.rules.Rule, with the gate's S as used (rule.staleness)
    train_config: TrainConfig
    evaluator: object  # the evaluator's multiprocessing.Process, ready
    ev: EvaluatorArgs
    out_dir: Path
    config: dict  # config.json as written at the start; ``finished`` is added at the end
    errors: list[str] = field(default_factory=list)
    interrupted: threading.Event = field(default_factory=threading.Event)

    def run(self) -> int:
        """Train for ``--duration-s`` (or until interrupted), write the results; the exit code."""
        self._start()
        stop_reason, cpu_shares = self._monitor()
        final_s = self._stop()
        starved = self._note_starved(cpu_shares)
        self._score_final(final_s, stop_reason)
        self.config["finished"] = self._finished(stop_reason, final_s, cpu_shares, starved)
        write_json(self.out_dir / schema.CONFIG, self.config)
        log.info("results in %s", self.out_dir)
        # A diverged run ran its course (its servers' refusals are its end, not a fault of the run).
        return 130 if stop_reason == "interrupted" else 0 if stop_reason == "diverged" or not self.errors else 1

    def _start(self) -> None:
        a, n = self.args, len(self.remotes)
        # Flat (one buffer): copies into shared memory and the study's update are then one operation each.
        self.state = TrainingState(flatten(initial_weights(a.seed, a.dataset)), n, self.rule.staleness, self.rule)
        self.rounds_log = CsvLog(self.out_dir / schema.ROUNDS, schema.ROUNDS_HEADER)
        self.events_log = CsvLog(self.out_dir / schema.EVENTS, schema.EVENTS_HEADER)
        self.processes = local_processes(self.infos, self.evaluator.pid)
        self.cpu_before = {name: cpu.sample(pid) for name, pid in self.processes.items()}
        self.t0 = time.monotonic()
        feed = EvalFeed(self.ev.requests, self.t0, a.eval_backlog, self._evaluator_behind,
                        latest_only=a.eval_every_rounds == 0, free=self.ev.free, epoch_ok_at=self.ev.epoch_ok_at)
        self.ctx = RunContext(self.state, self.remotes, self.train_config, a.dataset, self.rounds_log, self.events_log,
                              feed, a.eval_every_rounds, a.round_timeout_s, self.regime.time_scale,
                              self.t0, retries=[0] * n, faults=a.faults,
                              timers=profiling.RoundTimers(n) if a.profile and a.profiler == "timers" else None)
        self.threads = [threading.Thread(target=server_loop, args=(self.ctx, i, self.errors), name=f"server-{i}")
                        for i in range(n)]
        # Ctrl-C and SIGTERM end training early, however often they arrive: the handler only flags it, and
        # the results are still written and the evaluator drained.
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        if a.profile and a.profiler == "yappi":
            profiling.start()
        # Every lossy link's backoff state lasts at least two minimum RTOs: sampling once a minimum RTO sees each.
        rto_min_s = min((info.get("network", {}).get("rto_min_ms") or 200.0) for info in self.infos) / 1000
        framed = [w for w in self.remotes if w.weights_via == WEBSOCKET]
        self.sampler = BackoffSampler(framed, tick_s=max(0.005, rto_min_s)).start()
        self.timer = threading.Thread(target=eval_timer, args=(self.ctx, a.eval_interval_s, a.duration_s), name="eval-timer")
        self.timer.start()
        for t in self.threads:
            t.start()

    def _evaluator_behind(self) -> None:
        self.ctx.event("evaluator", "evaluator_behind", f"{self.args.eval_backlog} round-wise snapshots wait for the "
                       "evaluator: more are skipped until it catches up (raise --eval-every-rounds or --eval-backlog)",
                       logging.WARNING)

    def _on_signal(self, signum, _frame) -> None:
        if not self.interrupted.is_set():
            log.info("%s: stopping, then writing the results", signal.Signals(signum).name)
        self.interrupted.set()
        self.ev.hurry.set()  # the evaluator skips what it was sent but not yet scored, except the final model
        self.state.stop_event.set()

    def _monitor(self) -> tuple[str, dict]:
        """The main thread until the deadline or a stop: why training stopped, and each process's CPU
        share. It waits in short slices, not one long wait: the kernel may deliver a signal to any thread,
        and a main thread blocked in one long lock wait would only run the handler when that wait ends."""
        a, state = self.args, self.state
        self.live = LiveStatus(a.live and sys.stdout.isatty(), a.duration_s)
        self.report = ScoreReport(self.ev.scores, self.live, a.verbose)
        deadline = self.t0 + a.duration_s
        try:
            while not state.stop_event.wait(min(0.25, max(0.0, deadline - time.monotonic()))):
                self.report.drain()
                self.live.update(time.monotonic() - self.t0, state.rounds(), state.updates())
                if a.server_timeout_s:
                    for i in state.leave_out_silent(a.server_timeout_s):
                        self.ctx.event(i, "left_out", f"no answer for {a.server_timeout_s:g} s: the others go on "
                                       "without it", logging.WARNING)
                if not self.ctx.feed.closed and not self.evaluator.is_alive():
                    # No more scores, but the training (and its final model) is still worth finishing.
                    self.ctx.feed.close()
                    self.errors.append(f"evaluator exited with code {self.evaluator.exitcode} during training")
                    self.ctx.event("evaluator", "evaluator_died", f"exit code {self.evaluator.exitcode}; training goes "
                                   "on without F1 scores (score model.safetensors later with python -m "
                                   "asyncfl.client.evaluator)", logging.ERROR)
                if time.monotonic() >= deadline:
                    break
        finally:
            self.live.stop()
        # Sampled before the connections close: a server's connection thread, where its work was, ends with them.
        cpu_after, wall_s = {name: cpu.sample(pid) for name, pid in self.processes.items()}, time.monotonic() - self.t0
        if cpu_after.get("client") and self.sampler.native_id in cpu_after["client"]:  # its own entry: see cpu.starved
            cpu_after["client-sampler"] = {self.sampler.native_id: cpu_after["client"].pop(self.sampler.native_id)}
            self.cpu_before["client-sampler"] = {}
        # The stop event is set only by a signal or by a server thread that failed; the deadline leaves it clear.
        # A thread fails when the global model diverged, too: its server refuses a non-finite model.
        stop_reason = "interrupted" if self.interrupted.is_set() else "duration"
        if stop_reason == "duration" and state.stop_event.is_set():
            bad = non_finite(state.snapshot().weights)
            stop_reason = "diverged" if bad else "error"
            if bad:
                self.ctx.event("client", "diverged", f"the global model's {bad} holds non-finite values: no server "
                               "trains it, so training stops here", logging.WARNING)
        return stop_reason, cpu.shares(self.cpu_before, cpu_after, wall_s)

    def _stop(self) -> float:
        """Stop the threads and the sampler; the training time in seconds."""
        self.state.stop()
        for w in self.remotes:
            w.interrupt()  # rounds still out would be discarded anyway; don't wait up to a round timeout for them
        for t in self.threads + [self.timer]:
            t.join()
        self.sampler.stop()
        return time.monotonic() - self.t0

    def _note_starved(self, cpu_shares: dict) -> list[str]:
        starved = cpu.starved(cpu_shares)
        if starved and self.regime.paced:  # unpaced runs keep every core busy by design
            self.ctx.event("machine", "starved", ", ".join(
                f"{n} waited for a core {100 * cpu_shares[n]['wait_frac']:.0f}% of the time" for n in starved)
                + ": the machine was too busy for this run's timings", logging.WARNING)
        return starved

    def _score_final(self, elapsed_s: float, stop_reason: str) -> None:
        """The final model scored and saved, yappi.csv written, and every pending score waited for."""
        state, feed, report = self.state, self.ctx.feed, self.report
        final = state.snapshot()
        if self.interrupted.is_set():
            feed.drop_backlog()  # an interrupted run must end within seconds: only the final model is scored
        feed.submit("time", final.weights, final.min_round, final.max_round, time_s=elapsed_s, final=True)
        feed.finish()
        self.rounds_log.close()
        if self.ctx.timers is not None:
            self.ctx.timers.write_csv(self.out_dir / schema.YAPPI, [t.name for t in self.threads], state.rounds(),
                                      state.max_staleness)
        elif self.args.profile:
            profiling.write_yappi_csv(self.out_dir / schema.YAPPI, [t.name for t in self.threads], state.rounds(),
                                      state.max_staleness)
        save_file({k: v.contiguous() for k, v in final.weights.items()}, str(self.out_dir / schema.MODEL))
        log.info("training stopped (%s) after %.1f s: %d updates, rounds per server %s, largest staleness %d",
                 stop_reason, elapsed_s, state.updates(), state.rounds(), max(state.max_staleness))
        report.drain()
        if feed.dropped and not feed.closed:
            log.info("interrupted: %d pending snapshots not scored", feed.dropped)
        pending = feed.backlog() + feed.submitted - report.count
        if pending > 0 and not feed.closed:
            log.info("waiting for the evaluator to score %d pending snapshots", pending)
        while self.evaluator.is_alive() or not self.ev.scores.empty():
            self.evaluator.join(0.25)
            report.drain()
        if self.evaluator.exitcode != 0 and not feed.closed:
            self.errors.append(f"evaluator exited with code {self.evaluator.exitcode}")
            log.error("the evaluator exited with code %s", self.evaluator.exitcode)
        self.events_log.close()
        for w in self.remotes:
            w.close()

    def _finished(self, stop_reason: str, elapsed_s: float, cpu_shares: dict, starved: list[str]) -> dict:
        state, feed, report = self.state, self.ctx.feed, self.report
        return {
            "stop_reason": stop_reason,
            "training_s": round(elapsed_s, 3),
            "updates": state.updates(),  # changes of the global model (a buffering rule makes one per K results)
            "results": sum(state.rounds()) - sum(state.skipped),  # server results received and combined
            "rounds_per_server": state.rounds(),
            "max_staleness_per_server": state.max_staleness,
            "retries_per_server": self.ctx.retries,
            "skipped_rounds_per_server": state.skipped,
            "left_out_at_end": sorted(state.left_out()),
            "evaluations": report.count - report.skipped,
            "evaluations_dropped": feed.dropped + report.skipped,
            "evaluations_skipped_behind": feed.skipped,  # round-wise snapshots not taken: the evaluator was behind
            "evaluations_superseded": feed.superseded,  # --eval-every-rounds 0: replaced by a newer one while waiting
            "cpu": cpu_shares,  # per local process: CPU seconds, share of the wall clock, run-queue wait
            "starved": starved,  # processes that waited for a core >= cpu.STARVED_WAIT_FRAC of the time (evaluator aside)
            "load_average": list(os.getloadavg()),
            "errors": self.errors,
        }
