"""The model owner on PySyft 0.2.3: one thread per data owner driving a ``WebsocketClientWorker``, the
SSP gate, the study's update ``global += (new - old) / n`` and an evaluator process fed by a queue, as the
original's src/client.py was (diwangs/asynchronous-federated-learning at 14b2fc2).

    .venv-pysyft/bin/python -m syftstudy.model_owner SPEC.json

A round is the original's ``train``: ``TrainConfig(...).send(worker)``, ``worker.fit(dataset_key=...,
return_ids=[0])``, ``train_config.get_model().obj``, then the TrainConfig's collection. What a failure does
is the original's ``train_loop``: a websocket timeout (PySyft's ``TIMEOUT_INTERVAL`` on the socket,
divided by K in the paper regime) closes the connection, connects again (again while connecting times
out) and redoes the round; any other exception ends that owner's thread, and the run goes on. The gate
waits on a condition variable, as the native client's does (docs/departures.md). Writes f1_time.csv,
f1_epoch.csv, rounds.csv, events.csv and pysyft_run.json into the run folder.
"""

from __future__ import annotations

import logging
import os
import platform
import signal
import socket
import sys
import threading
import time
import traceback

import numpy as np
import torch

from syftstudy import common  # first: the loss is scripted before syft hooks torch

log = logging.getLogger("syftstudy")


class Study:
    """The shared state: the global model, each owner's completed rounds, the gate; one lock."""

    def __init__(self, weights: dict, n: int, staleness_threshold: int):
        self.cond = threading.Condition()
        self.weights, self.n, self.s = weights, n, staleness_threshold
        self.version = 0
        self.completed = [0] * n
        self.max_staleness = [0] * n
        self.stop = threading.Event()

    def wait_turn(self, i: int) -> bool:
        """The original's ``stale``: round r = completed + 1 waits while r - min(completed) > S + 1."""
        with self.cond:
            while not self.stop.is_set() and self.completed[i] - min(self.completed) > self.s:
                self.cond.wait()
            return not self.stop.is_set()

    def snapshot(self):
        with self.cond:
            return ({k: v.clone() for k, v in self.weights.items()}, self.version, min(self.completed),
                    max(self.completed))

    def apply(self, i: int, new: dict, old: dict, version: int):
        """``global += (new - old) / n`` under the lock; the owner's round completes."""
        with self.cond:
            for k, v in self.weights.items():
                v.add_((new[k] - old[k]) / self.n)
            behind = self.version - version
            self.version += 1
            old_min = min(self.completed)
            self.completed[i] += 1
            new_min = min(self.completed)
            staleness = self.completed[i] - new_min
            self.max_staleness[i] = max(self.max_staleness[i], staleness)
            if new_min > old_min:
                self.cond.notify_all()
            weights = {k: v.clone() for k, v in self.weights.items()} if new_min > old_min else None
            return self.completed[i], staleness, behind, new_min, max(self.completed), weights

    def halt(self) -> None:
        self.stop.set()
        with self.cond:
            self.cond.notify_all()


def as_arrays(weights: dict) -> dict:
    return {k: v.detach().numpy().copy() for k, v in weights.items()}


def evaluator(spec: dict, requests) -> None:
    """Scores snapshots (micro-F1, i.e. accuracy with one label per sample) into f1_time.csv and f1_epoch.csv."""
    torch.set_num_threads(1)
    if spec["evaluator_nice"]:
        os.nice(spec["evaluator_nice"])
    test = common.load_npz(spec["test_set"])
    x = torch.from_numpy(test["images"]).float().div_(255).sub_(spec["mean"]).div_(spec["std"]).unsqueeze(1)
    y = test["labels"]
    net = common.Net(tuple(spec["image_shape"]), spec["n_classes"]).eval()
    time_log = common.CsvLog(os.path.join(spec["out_dir"], "f1_time.csv"), ["time_s", "f1"])
    epoch_log = common.CsvLog(os.path.join(spec["out_dir"], "f1_epoch.csv"), ["epoch", "f1"])
    while True:
        item = requests.get()
        if item is None:
            break
        kind, marker, arrays = item
        net.load_state_dict({k: torch.from_numpy(v) for k, v in arrays.items()})
        with torch.no_grad():
            pred = np.concatenate([net(x[i:i + 500]).argmax(1).numpy() for i in range(0, len(x), 500)])
        f1 = float(np.mean(pred == y))
        (time_log if kind == "time" else epoch_log).write(marker, round(f1, 6))
        print("evaluator [%s %s] f1=%.4f" % (kind, marker, f1), flush=True)
    time_log.close()
    epoch_log.close()


class Client:
    def __init__(self, spec: dict):
        import syft as sy
        import websocket._http
        from syft.workers import websocket_client

        self.spec, self.sy = spec, sy
        # Each thread's model to send, traced before the hook as the original's module-level trace was (a
        # trace taken after it differs from run to run and warns).
        shape = tuple(spec["image_shape"])
        self.models = [torch.jit.trace(common.Net(shape, spec["n_classes"]), torch.zeros((1, 1) + shape))
                       for _ in spec["servers"]]
        self.hook = sy.TorchHook(torch)
        # PySyft's websocket timeout (60 s on every socket operation), divided by K in the paper regime.
        websocket_client.TIMEOUT_INTERVAL = spec["timeout_s"]
        if spec["tcp_cc"]:  # every connection websocket-client opens, PySyft's own reconnections included
            websocket._http.DEFAULT_SOCKET_OPTION.append(
                (socket.IPPROTO_TCP, common.TCP_CONGESTION, spec["tcp_cc"].encode()))
        self.n = len(spec["servers"])
        init = common.load_npz(spec["initial_weights"])
        self.study = Study({k: torch.from_numpy(v.copy()) for k, v in init.items()}, self.n,
                           spec["staleness_threshold"])
        out = spec["out_dir"]
        self.rounds_log = common.CsvLog(os.path.join(out, "rounds.csv"), common.ROUNDS_HEADER)
        self.events_log = common.CsvLog(os.path.join(out, "events.csv"), common.EVENTS_HEADER)
        self.retries = [0] * self.n
        self.deaths = {}
        self.t0 = time.monotonic()
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # as the original's evaluator
        self.requests = ctx.Queue()
        self.evaluator = ctx.Process(target=evaluator, args=(spec, self.requests), name="evaluator", daemon=True)
        self.evaluator.start()
        self.workers = [self.connect(i, s) for i, s in enumerate(spec["servers"])]

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 4)

    def event(self, server, what: str, detail: str = "", silence_s="", round_s="") -> None:
        self.events_log.write(self.now(), server, what, detail, silence_s, round_s)
        print("%s %s %s" % (server, what, detail), flush=True)

    def connect(self, i: int, server: dict):
        """The original's: keep trying (refused, timed out) until the owner answers, here with a deadline."""
        from syft.workers.websocket_client import WebsocketClientWorker
        from websocket._exceptions import WebSocketTimeoutException

        deadline = time.monotonic() + self.spec["connect_timeout_s"]
        while True:
            try:
                return WebsocketClientWorker(hook=self.hook, host=server["host"], port=server["port"],
                                             id="dataserver-%d" % i)
            # The original caught refused and timed-out TCP connects; a handshake that times out (a lost
            # segment on a lossy link) raises websocket-client's own timeout, retried here as well.
            except (ConnectionRefusedError, socket.timeout, WebSocketTimeoutException):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def train(self, worker, model, old: dict):
        """One round as the original's ``train``: send, fit, get the model back (and, on return, the
        TrainConfig's collection sends the loss pointer's delete)."""
        model.load_state_dict(old)
        train_config = self.sy.TrainConfig(
            model=model, loss_fn=common.loss_fn, epochs=1, batch_size=self.spec["batch_size"],
            max_nr_batches=self.spec["batches_per_round"], shuffle=self.spec["shuffle"], optimizer="SGD",
            optimizer_args={"lr": self.spec["lr"]})
        train_config.send(worker)
        loss = worker.fit(dataset_key=self.spec["dataset_key"], return_ids=[0])
        new = {k: v.detach() for k, v in train_config.get_model().obj.state_dict().items()}
        return float(loss.data), new

    def loop(self, i: int) -> None:
        from websocket._exceptions import WebSocketTimeoutException

        worker, study, model = self.workers[i], self.study, self.models[i]
        every = max(1, self.spec["eval_every_rounds"])
        try:
            while not study.stop.is_set():
                if not study.wait_turn(i):
                    break
                old, version, _, _ = study.snapshot()
                start = time.monotonic()
                try:
                    loss, new = self.train(worker, model, old)
                except (WebSocketTimeoutException, TimeoutError) as e:  # the original's only catch
                    if study.stop.is_set():
                        break
                    self.retries[i] += 1
                    self.event(i, "round_abandoned", "%s: %s; reconnecting at once" % (type(e).__name__, e),
                               self.spec["timeout_s"], round(time.monotonic() - start, 4))
                    while not study.stop.is_set():
                        try:
                            worker.close()
                            worker.connect()
                            break
                        except socket.timeout:
                            continue
                    if not study.stop.is_set():
                        self.event(i, "reconnected", worker.url)
                    continue
                round_s = time.monotonic() - start
                if study.stop.is_set():
                    break
                rnd, staleness, behind, new_min, _, weights = study.apply(i, new, old, version)
                applied = time.monotonic()
                self.rounds_log.write(self.now(), i, rnd, staleness, behind, loss, round(round_s, 6), "", "", "", "",
                                      "", "", "", "", "%.6f" % (start - self.t0), "%.6f" % (applied - self.t0))
                if weights is not None and new_min % every == 0:
                    self.requests.put(("epoch", new_min, as_arrays(weights)))
        except Exception as e:  # the original's thread ended here, with its traceback
            if not study.stop.is_set():
                self.deaths[i] = "%s: %s" % (type(e).__name__, e)
                self.event(i, "thread_ended", "%s: %s (not a timeout: the original's train_loop ended here)"
                           % (type(e).__name__, str(e)[:300]), "", round(time.monotonic() - start, 4))
                traceback.print_exc()

    def run(self) -> dict:
        spec, study = self.spec, self.study
        stopped = []

        def on_signal(signum, frame):
            stopped.append(signum)
            study.halt()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        procs = dict(spec["server_pids"], client=os.getpid(), evaluator=self.evaluator.pid)
        cpu_before = {name: common.schedstat(pid) for name, pid in procs.items()}
        self.t0 = time.monotonic()
        threads = [threading.Thread(target=self.loop, args=(i,), name="dataserver-%d" % i, daemon=True)
                   for i in range(self.n)]
        for t in threads:
            t.start()
        k, interval, duration = 0, spec["eval_interval_s"], spec["duration_s"]
        while k * interval < duration and not study.stop.is_set():
            due = self.t0 + k * interval
            if study.stop.wait(max(0.0, due - time.monotonic())):
                break
            weights, _, _, _ = study.snapshot()
            self.requests.put(("time", round(k * interval, 4), as_arrays(weights)))
            k += 1
        study.stop.wait(max(0.0, self.t0 + duration - time.monotonic()))
        training_s = time.monotonic() - self.t0
        cpu_after = {name: common.schedstat(pid) for name, pid in procs.items()}
        study.halt()
        weights, _, _, _ = study.snapshot()
        self.requests.put(("time", round(training_s, 4), as_arrays(weights)))  # the final model, always scored
        self.requests.put(None)
        for t in threads:  # a round in flight ends within one socket timeout; it does not count
            t.join(max(0.1, spec["timeout_s"] + 1 - (time.monotonic() - self.t0 - training_s)))
        self.evaluator.join(120)
        self.rounds_log.close()
        self.events_log.close()
        shares = common.cpu_shares(cpu_before, cpu_after, training_s)
        return {
            "stop_reason": "interrupted" if stopped else "duration",
            "training_s": round(training_s, 3),
            "updates": study.version,
            "results": sum(study.completed),
            "rounds_per_server": list(study.completed),
            "max_staleness_per_server": list(study.max_staleness),
            "retries_per_server": self.retries,
            "skipped_rounds_per_server": [0] * self.n,
            "left_out_at_end": [],
            "threads_ended": {str(i): why for i, why in sorted(self.deaths.items())},
            "cpu": shares,
            "starved": sorted(n for n, s in shares.items() if n != "evaluator" and s["wait_frac"] >= 0.05),
            "load_average": list(os.getloadavg()),
            "errors": [] if self.evaluator.exitcode == 0 else ["evaluator exited with code %s" % self.evaluator.exitcode],
        }


def versions() -> dict:
    """The installed versions (read from the distributions: importing torchvision after the hook fails)."""
    import pkg_resources

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("syft", "syft-proto", "torch", "torchvision", "numpy", "websocket-client", "websockets", "msgpack",
                 "lz4", "protobuf"):
        out[name] = pkg_resources.get_distribution(name).version
    return out


def main(argv: list) -> int:
    spec = common.read_spec(argv[1])
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    try:
        client = Client(spec)
    except Exception as e:  # an owner never answered: nothing was trained
        traceback.print_exc()
        finished = {"stop_reason": "error", "errors": ["%s: %s" % (type(e).__name__, e)]}
        common.write_json(os.path.join(spec["out_dir"], "pysyft_run.json"), {"finished": finished, "versions": versions()})
        return 1
    finished = client.run()
    common.write_json(os.path.join(spec["out_dir"], "pysyft_run.json"), {"finished": finished, "versions": versions()})
    print("done: rounds per server %s, %s" % (finished["rounds_per_server"], finished["stop_reason"]), flush=True)
    return 130 if finished["stop_reason"] == "interrupted" else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
