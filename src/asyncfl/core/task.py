"""What both sides share of the learning task: the training step on a shard, and scoring a model.

``ShardTrainer`` is one data owner's data and training loop without any networking: the server process
(server/owner.py) serves it over a websocket, and a test can drive it in-process. ``Scorer`` computes the
micro-F1 the evaluator logs. The model and its weights are in core/model.py, the datasets in core/data.py.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from asyncfl.core import data
from asyncfl.core.model import Net, check_weights, copy_into, flatten, flatten_parameters, loss_fn
from asyncfl.core.protocol import FitResult, TrainConfig
from asyncfl.core.regime import paced_idle_s


@torch.no_grad()
def sgd_step(params: list[torch.Tensor], lr: float) -> None:
    """Plain SGD, p -= lr * grad: bit for bit what torch.optim.SGD does without momentum or weight decay,
    without its first-call cost (over a second, importing the compiler stack) in every server process."""
    for p in params:
        if p.grad is not None:
            p.add_(p.grad, alpha=-lr)


class BatchStream:
    """Endless batches of shard indices, epoch after epoch (like a DataLoader re-created per epoch)."""

    def __init__(self, n: int, rng: np.random.Generator):
        self.n, self.rng = n, rng
        self.order = np.arange(n)
        self.pos = n  # start a fresh epoch on the first request

    def next(self, batch_size: int, shuffle: bool) -> np.ndarray:
        if self.n == 0:
            return self.order[:0]
        if self.pos >= self.n:
            self.order = self.rng.permutation(self.n) if shuffle else np.arange(self.n)
            self.pos = 0
        batch = self.order[self.pos : self.pos + batch_size]
        self.pos += len(batch)
        return batch


@dataclass
class ShardTrainer:
    """One data owner's data and training loop, without any networking."""

    name: str
    dataset_key: str
    images: torch.Tensor  # float32 [n, 1, H, W], normalised
    labels: torch.Tensor  # int64 [n]
    seed: int = 0
    speed_ratio: float = 1.0  # >= 1: total round time is this multiple of the compute time (or of the pace)
    pace_s: float = 0.0  # a round lasts at least this long (the paper regime's pace, see core/regime.py); 0 = no pace
    model: Net | None = None  # None: the network of dataset_key's registry entry

    def __post_init__(self) -> None:
        self.stream = BatchStream(len(self.labels), np.random.default_rng(self.seed))
        self.model = self.model or Net.for_dataset(self.dataset_key)
        self.reference = {k: (tuple(v.shape), v.dtype) for k, v in self.model.state_dict().items()}
        self.weights = flatten_parameters(self.model)  # the model's parameters, as views of one buffer
        self.fits = 0  # rounds trained since this process started (reported by hello)
        self._lock = threading.Lock()  # one model: connections that overlap take turns

    def check_weights(self, weights: dict[str, torch.Tensor] | None) -> None:
        check_weights(weights, self.reference)

    def warm_up(self) -> None:
        """One throwaway forward/backward pass in the calling thread: PyTorch's first call pays one-off
        set-up costs, and a thread's first call pays them again (several warm calls' worth), which would otherwise land
        in the first round's compute time. The model's weights are left as they were."""
        x = self.images[:32] if len(self.labels) else torch.zeros(32, 1, *self.images.shape[2:])
        y = self.labels[:32] if len(self.labels) else torch.zeros(32, dtype=torch.int64)
        with self._lock:  # the model's gradients are shared with any round in progress
            loss_fn(self.model(x), y).backward()
            self.model.zero_grad(set_to_none=True)

    def fit(self, dataset_key: str, config: TrainConfig, weights: dict[str, torch.Tensor],
            out: dict[str, torch.Tensor] | None = None) -> FitResult:
        """One round: train ``weights`` on this shard. The trained weights are a new copy, or written into
        ``out`` (tensors of the model's shapes, e.g. a shared memory segment's reply region)."""
        if dataset_key != self.dataset_key:
            raise ValueError(f"unknown dataset_key {dataset_key!r}; this server hosts {self.dataset_key!r}")
        with self._lock:
            return self._fit(config, weights, out)

    def _fit(self, config: TrainConfig, weights: dict[str, torch.Tensor], out: dict | None) -> FitResult:
        t0 = time.perf_counter()
        copy_into(self.weights, weights)  # load_state_dict, in one copy when weights are flat (shared memory)
        self.model.train()
        params = list(self.model.parameters())
        losses, n_samples = [], 0
        for _ in range(config.max_nr_batches):
            idx = torch.from_numpy(self.stream.next(config.batch_size, config.shuffle))
            if len(idx) == 0:
                break
            self.model.zero_grad(set_to_none=True)
            loss = loss_fn(self.model(self.images[idx]), self.labels[idx])
            loss.backward()
            sgd_step(params, config.lr)
            losses.append(loss.item())
            n_samples += len(idx)
        compute_s = time.perf_counter() - t0
        self.fits += 1
        # A copy, not the model's own tensors: the reply is sent after the lock is released, when an
        # overlapping connection's round may already be changing the model.
        new_weights = copy_into(out, self.weights) if out is not None else flatten(self.weights)
        check_weights(new_weights, self.reference)  # weights that trained into inf/NaN are not sent back
        idle_s = paced_idle_s(compute_s, self.pace_s, self.speed_ratio)
        if idle_s > 0:
            time.sleep(idle_s)
        return FitResult(
            weights=new_weights,
            loss=float(np.mean(losses)) if losses else float("nan"),
            n_samples=n_samples,
            compute_s=compute_s,
            idle_s=idle_s,
        )


def micro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Micro-averaged F1 (scikit-learn's ``f1_score(average="micro")``): true positives, false positives
    and false negatives pooled over the classes. With one label per sample a wrong prediction is one false
    positive (of the predicted class) and one false negative (of the true class), so this is the accuracy;
    computed here because importing scikit-learn cost every evaluator start seconds of CPU."""
    tp = int(np.count_nonzero(np.asarray(y_true) == np.asarray(y_pred)))
    fp = fn = len(y_true) - tp
    return 2 * tp / (2 * tp + fp + fn) if len(y_true) else 0.0


EVAL_SUBSET_SEED = 15  # fixed: the subset is part of what a score means, the same in every run


def eval_set(dataset: data.Dataset, n_samples: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The test images (uint8) and labels a score is computed on: all of them, or (``n_samples`` > 0) a
    stratified subset of about that many, the same in every run and for every backend."""
    images, labels = dataset.test_images, dataset.test_labels
    if 0 < n_samples < len(labels):
        _, chosen = data.stratified_split(labels, n_samples / len(labels), np.random.default_rng(EVAL_SUBSET_SEED))
        images, labels = images[chosen], labels[chosen]
    return images, labels


class Scorer:
    """Micro-F1 of a state dict on a fixed test set: the whole one, or (``n_samples`` > 0) a stratified
    subset of about that many, the same in every run (scoring the whole of a large test set takes seconds
    of a core)."""

    def __init__(self, dataset: data.Dataset, n_samples: int = 0):
        images, labels = eval_set(dataset, n_samples)
        self.x = data.to_tensor(images, dataset.name).contiguous(memory_format=torch.channels_last)
        self.y = labels
        self.net = Net.for_dataset(dataset.name).eval().to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def f1(self, weights: dict[str, torch.Tensor]) -> float:
        self.net.load_state_dict(weights)
        pred = np.concatenate([self.net(self.x[i : i + 500]).argmax(1).numpy() for i in range(0, len(self.x), 500)])
        return micro_f1(self.y, pred)
