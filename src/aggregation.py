"""Aggregation arithmetic on state dicts (pure: every function returns new tensors, inputs untouched).

The study's asynchronous FedAvg applies each server's update as soon as it arrives, weighted so that a
full set of n updates adds up to an average:

    global += (new - old) / n_servers

where ``old`` is the global model the server was sent (its snapshot) and ``new`` what it sent back.
"""

from __future__ import annotations

import torch

StateDict = dict[str, torch.Tensor]


def delta(old: StateDict, new: StateDict) -> StateDict:
    """new - old, per tensor."""
    return {k: new[k] - old[k] for k in old}


def scale(weights: StateDict, factor: float) -> StateDict:
    return {k: v * factor for k, v in weights.items()}


def add(a: StateDict, b: StateDict) -> StateDict:
    return {k: a[k] + b[k] for k in a}


def scaled_update(old: StateDict, new: StateDict, n_servers: int) -> StateDict:
    """(new - old) / n_servers: the part of async FedAvg that needs no lock."""
    return {k: (new[k] - old[k]).div_(n_servers) for k in old}


def async_fedavg(global_weights: StateDict, old: StateDict, new: StateDict, n_servers: int) -> StateDict:
    """global + (new - old) / n_servers."""
    return add(global_weights, scaled_update(old, new, n_servers))
