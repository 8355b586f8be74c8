"""The model evaluator: a separate process that scores model snapshots on the test set (micro-F1).

The client feeds it a queue of ``EvalRequest``s: a time-wise snapshot every ``--eval-interval-s`` and a
round-wise one whenever the smallest completed round advances. Each carries the time it was taken, so a
slow evaluator never shifts a curve; the evaluator runs at a lower CPU priority than training and simply
falls behind while training runs, then drains its backlog before the client exits. Scores go to
``f1_time.csv`` (time_s,f1) and ``f1_epoch.csv`` (epoch,f1) row by row, and to the log as they are known.

Standalone, it scores a saved model:

    python -m asyncfl.client.evaluator --weights out/RUN/model.safetensors --dataset mnist-5k
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import tyro
from safetensors.torch import load as st_load
from safetensors.torch import load_file

from asyncfl.core import data, datasets, schema
from asyncfl.core.model import Net
from asyncfl.core.task import Scorer
from asyncfl.process.lifecycle import keep_freed_memory
from asyncfl.process.runlog import CsvLog, setup_logging

log = logging.getLogger("asyncfl.client.evaluator")


@dataclass(frozen=True)
class EvalRequest:
    kind: str  # "time" (time-wise log) or "epoch" (round-wise log)
    time_s: float  # seconds since training started, when the snapshot was taken
    epoch: int  # smallest completed round at snapshot time
    max_round: int  # largest completed round at snapshot time
    weights: bytes  # safetensors bytes of the snapshot
    final: bool = False  # the model at the end of training: always scored, even in a hurry


def format_score(req: EvalRequest, f1: float) -> str:
    if req.kind == "time":
        return f"[{req.time_s:7.1f} s] f1={f1:.4f}  rounds min/max {req.epoch}/{req.max_round}"
    return f"[round {req.epoch:5d}] f1={f1:.4f}  at {req.time_s:.1f} s"


@dataclass
class EvaluatorArgs:
    """What the evaluator process takes: the channels it shares with the client (multiprocessing objects
    of one fork context) and what it scores on."""

    requests: Any  # Queue: the run folder (a str; None = abandoned), then EvalRequests, then None
    scores: Any  # Queue: (request without weights, f1 or None if skipped), for the client to print
    ready: Any  # Event: set once the test set is loaded and scoring is warm
    hurry: Any  # Event: set when the run must end within seconds (only the final model is then scored)
    dataset: str  # the registered dataset whose test set scores the model
    data_dir: str = "data"
    nice: int = 0  # niceness added to the process
    n_samples: int = 0  # score on a fixed stratified subset of this many test samples (0 = all)
    free: Any = None  # Semaphore released after each request (the feed's flow control)
    epoch_ok_at: Any = None  # Value("d"): when the next round-wise snapshot may start (with cpu_frac)
    cpu_frac: float = 0.0  # largest share of one core spent on round-wise snapshots (0 = no limit)

    @classmethod
    def open(cls, ctx, dataset: str, data_dir: str, nice: int, n_samples: int, cpu_frac: float) -> EvaluatorArgs:
        """New channels from the multiprocessing context ``ctx``."""
        return cls(ctx.Queue(maxsize=1), ctx.Queue(), ctx.Event(), ctx.Event(), dataset, data_dir, nice, n_samples,
                   ctx.Semaphore(1), ctx.Value("d", 0.0, lock=False), cpu_frac)


def run_evaluator(a: EvaluatorArgs) -> None:
    """Body of the evaluator process. It starts while the client still connects to its servers: it loads
    the test set, sets ``ready`` once able to score, then takes the run folder (a str) as the first
    request (None: the run was abandoned before it had one), and scores every request until a None
    arrives. Each score goes to its CSV and, as (request without weights, f1), to ``scores``: the client
    prints them, so that they interleave cleanly with its own output. Once ``hurry`` is set (the run was
    interrupted and must end within seconds) only the final model is scored; a request skipped is
    answered with (request, None). After each request it releases ``free``; after a round-wise one, with
    ``cpu_frac``, it sets ``epoch_ok_at`` to when the next may start for its scoring to use at most that
    share of one core (measured: the CPU time this one took)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the client's to handle; we drain first
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # forked: not the client's handler, which would raise here
    torch.set_num_threads(1)
    keep_freed_memory()
    if a.nice:
        os.nice(a.nice)  # lower priority: scoring must not slow the training it measures
    scorer = Scorer(data.load(a.dataset, a.data_dir), a.n_samples)
    scorer.f1(Net.for_dataset(a.dataset).state_dict())  # warm-up: the first forward pass pays PyTorch's one-off set-up
    a.ready.set()
    out_dir = a.requests.get()
    if out_dir is None:
        return
    setup_logging(Path(out_dir) / schema.CLIENT_LOG, console=False)  # errors only: scores travel through `scores`
    time_log = CsvLog(Path(out_dir) / schema.F1_TIME, schema.F1_TIME_HEADER)
    epoch_log = CsvLog(Path(out_dir) / schema.F1_EPOCH, schema.F1_EPOCH_HEADER)
    try:
        while (req := a.requests.get()) is not None:
            started, cpu_started = time.monotonic(), time.process_time()
            f1 = None if a.hurry.is_set() and not req.final else scorer.f1(st_load(req.weights))
            if f1 is not None and req.kind == "time":
                time_log.write(round(req.time_s, 3), round(f1, 6))
            elif f1 is not None:
                epoch_log.write(req.epoch, round(f1, 6))
                if a.cpu_frac and a.epoch_ok_at is not None:
                    a.epoch_ok_at.value = started + (time.process_time() - cpu_started) / a.cpu_frac
            a.scores.put((replace(req, weights=b""), f1))
            if a.free is not None:
                a.free.release()
    finally:
        time_log.close()
        epoch_log.close()


@dataclass
class Args:
    weights: str  # path of a safetensors file with the model's state dict (e.g. a run's model.safetensors)
    dataset: datasets.Name = datasets.DEFAULT  # test set to score on
    data_dir: str = "data"  # where downloaded datasets are stored


def main(args: Args) -> int:
    torch.set_num_threads(1)
    try:
        scorer = Scorer(data.load(args.dataset, args.data_dir))
    except data.DatasetUnavailable as e:
        print(f"evaluator: {e}", file=sys.stderr)
        return 2
    print(f"f1={scorer.f1(load_file(args.weights)):.4f} on the {args.dataset} test set ({len(scorer.y)} samples)")
    return 0


if __name__ == "__main__":
    sys.exit(main(tyro.cli(Args, prog="python -m asyncfl.client.evaluator", description=__doc__)))
