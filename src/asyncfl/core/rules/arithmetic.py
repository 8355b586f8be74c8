"""Aggregation arithmetic on state dicts, the rules' building blocks (pure: every function returns new
tensors, inputs untouched; ``WeightedSum`` changes only the buffer it owns).

The study's asynchronous FedAvg applies each server's update as soon as it arrives, weighted so that a
full set of n updates adds up to an average:

    global += (new - old) / n_servers

where ``old`` is the global model the server was sent (its snapshot) and ``new`` what it sent back.
"""

from __future__ import annotations

import torch

from asyncfl.core.model import FlatWeights, flat_of, shapes_of

StateDict = dict[str, torch.Tensor]


def delta(old: StateDict, new: StateDict) -> StateDict:
    """new - old, per tensor."""
    flat = _both_flat(old, new)
    if flat:
        return FlatWeights.views_of(torch.sub(flat[1], flat[0]), shapes_of(old))
    return {k: new[k] - old[k] for k in old}


def scale(weights: StateDict, factor: float) -> StateDict:
    flat = flat_of(weights)
    if flat is not None:
        return FlatWeights.views_of(flat * factor, shapes_of(weights))
    return {k: v * factor for k, v in weights.items()}


class WeightedSum:
    """sum_i w_i d_i built as the d_i arrive (each added in place into one buffer of its own), so that
    a rule which waits for several results does the work as each comes, not all of it after the last one:
    the last arrival of a synchronous round is the round's critical path."""

    def __init__(self):
        self.sum: StateDict | None = None
        self.total = 0.0
        self.count = 0

    def add(self, d: StateDict, w: float) -> None:
        if self.sum is None:
            self.sum = scale(d, float(w))
        elif flat_of(self.sum) is not None and flat_of(d) is not None and shapes_of(d) == shapes_of(self.sum):
            flat_of(self.sum).add_(flat_of(d), alpha=float(w))
        else:
            self.sum = {k: v.add_(d[k], alpha=float(w)) for k, v in self.sum.items()}
        self.total += float(w)
        self.count += 1

    def mean(self) -> StateDict:
        """sum_i (w_i / sum w) d_i; all zeros when the weights sum to zero (nobody trained on anything)."""
        if self.sum is None:
            raise ValueError("nothing was added")
        if self.total <= 0:
            return scale(self.sum, 0.0)
        return scale(self.sum, 1.0 / self.total)


def add(a: StateDict, b: StateDict) -> StateDict:
    flat = _both_flat(a, b)
    if flat:
        return FlatWeights.views_of(flat[0] + flat[1], shapes_of(a))
    return {k: a[k] + b[k] for k in a}


def scaled_update(old: StateDict, new: StateDict, n_servers: int) -> StateDict:
    """(new - old) / n_servers: the part of async FedAvg that needs no lock."""
    flat = _both_flat(old, new)
    if flat:
        return FlatWeights.views_of(torch.sub(flat[1], flat[0]).div_(n_servers), shapes_of(old))
    return {k: (new[k] - old[k]).div_(n_servers) for k in old}


def _both_flat(a: StateDict, b: StateDict) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The flat tensors of two FlatWeights of the same layout (an operation on the whole model is then one
    PyTorch call instead of one per tensor; element by element the arithmetic is the same), else None."""
    fa, fb = flat_of(a), flat_of(b)
    if fa is None or fb is None or shapes_of(a) != shapes_of(b):
        return None
    return fa, fb


def async_fedavg(global_weights: StateDict, old: StateDict, new: StateDict, n_servers: int) -> StateDict:
    """global + (new - old) / n_servers."""
    return add(global_weights, scaled_update(old, new, n_servers))


def weighted_mean(deltas: list[StateDict], weights: list[float]) -> StateDict:
    """sum_i (w_i / sum w) delta_i; all zeros when the weights sum to zero (nobody trained on anything)."""
    acc = WeightedSum()
    for d, w in zip(deltas, weights):
        acc.add(d, w)
    return acc.mean()


def fedavg(global_weights: StateDict, old: StateDict, news: list[StateDict], n_samples: list[int]) -> StateDict:
    """Synchronous FedAvg: every server trained from ``old`` (= the global model of this round);
    global + sum_i (n_i / sum n) (new_i - old)."""
    return add(global_weights, weighted_mean([delta(old, new) for new in news], n_samples))


def staleness_weight(fn: str, gap: int, a: float = 0.5, b: int = 4) -> float:
    """FedAsync's s(t - tau) for a gap of ``gap`` global updates since the snapshot (Xie et al., 2019):
    constant 1; polynomial (1 + gap)^-a; hinge 1 if gap <= b else 1 / (a (gap - b) + 1)."""
    if gap < 0:
        raise ValueError("the gap cannot be negative")
    if fn == "constant":
        return 1.0
    if fn == "polynomial":
        return (1.0 + gap) ** -a
    if fn == "hinge":
        return 1.0 if gap <= b else 1.0 / (a * (gap - b) + 1.0)
    raise ValueError(f"unknown staleness function {fn!r}")


def mix(global_weights: StateDict, new: StateDict, alpha_t: float) -> StateDict:
    """FedAsync's update: (1 - alpha_t) * global + alpha_t * new."""
    return {k: global_weights[k] * (1.0 - alpha_t) + new[k] * alpha_t for k in global_weights}


def mean(deltas: list[StateDict]) -> StateDict:
    return weighted_mean(deltas, [1.0] * len(deltas))
