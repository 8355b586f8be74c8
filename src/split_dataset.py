"""The paper's skewed split of a labelled dataset over data servers (pure functions, numpy).

For every class c with count n_c, the first n_servers - 1 servers draw their share from a Gaussian with
mean n_c / n_servers and standard deviation D (the ``stdev``), clipped to [0, n_c] and truncated to an
integer; draws are granted in order until the class runs out, and the last server takes what remains.
The shares are then shuffled among the servers, so that the remainder does not always land on the last
one (the original did the same). D = 0 gives a near-even split; D = 600 a mild imbalance on MNIST; D =
10000 a severe one where some servers lack whole classes.

Two other partitions compare with it (``partition``): ``dirichlet`` (per-class proportions drawn from a
Dirichlet(alpha) distribution) and ``shards`` (label-sorted shards, a fixed number per server).

Everything takes an explicit ``numpy.random.Generator``: the same seed gives the same split.
The command-line table printer is the top-level ``split_dataset.py``.
"""

from __future__ import annotations

import numpy as np


def gaussian_class_counts(
    class_counts: np.ndarray, n_servers: int, stdev: float, rng: np.random.Generator
) -> np.ndarray:
    """How many samples of each class each server gets: int64 [n_classes, n_servers], rows sum to counts."""
    class_counts = np.asarray(class_counts, dtype=np.int64)
    if n_servers < 1:
        raise ValueError("n_servers must be at least 1")
    if stdev < 0:
        raise ValueError("stdev must not be negative")
    means = class_counts / n_servers
    draws = rng.normal(means[:, None], stdev, size=(len(class_counts), n_servers - 1))
    draws = np.floor(np.clip(draws, 0, class_counts[:, None])).astype(np.int64)
    # Grant draws in order until a class runs out: cap the running total at the class count.
    granted = np.minimum(np.cumsum(draws, axis=1), class_counts[:, None])
    first = np.diff(granted, axis=1, prepend=0)
    last = class_counts - (granted[:, -1] if n_servers > 1 else 0)
    counts = np.concatenate([first, last[:, None]], axis=1)
    return rng.permuted(counts, axis=1)


def split_indices(labels: np.ndarray, n_servers: int, stdev: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Partition the indices of ``labels`` into ``n_servers`` disjoint shards (each sorted ascending)."""
    labels = np.asarray(labels)
    _, class_counts = np.unique(labels, return_counts=True)
    return _cut_by_class(labels, gaussian_class_counts(class_counts, n_servers, stdev, rng), rng)


def class_count_table(labels: np.ndarray, shards: list[np.ndarray], n_classes: int) -> np.ndarray:
    """int64 [n_servers, n_classes]: how many samples of each class each shard holds."""
    labels = np.asarray(labels)
    return np.stack([np.bincount(labels[s], minlength=n_classes) for s in shards]) if shards else np.zeros((0, n_classes), np.int64)


def format_table(table: np.ndarray) -> str:
    """A fixed-width text table: one row per server, one column per class, plus totals."""
    n_servers, n_classes = table.shape
    width = max(5, len(str(int(table.sum()))) + 1)
    header = "server".ljust(8) + "".join(f"{c:>{width}}" for c in range(n_classes)) + f"{'total':>{width + 2}}"
    lines = [header]
    for s in range(n_servers):
        lines.append(f"{s:<8}" + "".join(f"{v:>{width}}" for v in table[s]) + f"{table[s].sum():>{width + 2}}")
    lines.append("total".ljust(8) + "".join(f"{v:>{width}}" for v in table.sum(axis=0)) + f"{table.sum():>{width + 2}}")
    return "\n".join(lines)


# ---- Other partitions (``--partition``), for comparison with the study's Gaussian one -------------------


def dirichlet_class_counts(class_counts: np.ndarray, n_servers: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """int64 [n_classes, n_servers]: each class's samples shared in proportions drawn from
    Dirichlet(alpha, ..., alpha) (small alpha: each class concentrated on few servers; large: even), the
    counts rounded down and the remainder handed out one by one to the largest fractional parts."""
    if alpha <= 0:
        raise ValueError("--alpha-dirichlet must be positive")
    class_counts = np.asarray(class_counts, dtype=np.int64)
    props = rng.dirichlet(np.full(n_servers, float(alpha)), size=len(class_counts))
    exact = props * class_counts[:, None]
    counts = np.floor(exact).astype(np.int64)
    for c in range(len(class_counts)):
        short = class_counts[c] - counts[c].sum()
        counts[c, np.argsort(counts[c] - exact[c], kind="stable")[:short]] += 1
    return counts


def split_dirichlet(labels: np.ndarray, n_servers: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Partition indices with per-class proportions from a Dirichlet distribution (Hsu et al. 2019)."""
    labels = np.asarray(labels)
    _, class_counts = np.unique(labels, return_counts=True)
    return _cut_by_class(labels, dirichlet_class_counts(class_counts, n_servers, alpha, rng), rng)


def split_shards(labels: np.ndarray, n_servers: int, shards_per_server: int, rng: np.random.Generator) -> list[np.ndarray]:
    """McMahan et al.'s pathological split: sort the samples by label, cut them into n_servers *
    shards_per_server equal shards, and give every server ``shards_per_server`` shards at random."""
    if shards_per_server < 1:
        raise ValueError("--shards-per-server must be at least 1")
    labels = np.asarray(labels)
    n_shards = n_servers * shards_per_server
    if n_shards > len(labels):
        raise ValueError(f"{n_shards} shards from {len(labels)} samples")
    # Shuffle first, then sort stably by label: samples of a class in random order, classes in order.
    shuffled = rng.permutation(len(labels))
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
    shards = np.array_split(by_label, n_shards)
    owner = rng.permutation(n_shards) % n_servers
    return [np.sort(np.concatenate([shards[i] for i in np.flatnonzero(owner == s)])) for s in range(n_servers)]


def _cut_by_class(labels: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Shards from a [n_classes, n_servers] count table: indices grouped by class once (stable sort), each
    class's run shuffled and cut at the share boundaries."""
    n_servers = counts.shape[1]
    _, class_counts = np.unique(labels, return_counts=True)
    by_class = np.split(np.argsort(labels, kind="stable"), np.cumsum(class_counts)[:-1])
    pieces: list[list[np.ndarray]] = [[] for _ in range(n_servers)]
    for c in range(len(by_class)):
        for server, part in enumerate(np.split(rng.permutation(by_class[c]), np.cumsum(counts[c])[:-1])):
            pieces[server].append(part)
    return [np.sort(np.concatenate(p)) if p else np.empty(0, dtype=np.int64) for p in pieces]


PARTITIONS = ("gaussian", "dirichlet", "shards")


def partition(labels: np.ndarray, n_servers: int, how: str, rng: np.random.Generator, stdev: float = 0.0,
              alpha_dirichlet: float = 0.5, shards_per_server: int = 2) -> list[np.ndarray]:
    """The split named by ``how`` (``--partition``): gaussian (the study's D), dirichlet or shards."""
    if how == "gaussian":
        return split_indices(labels, n_servers, stdev, rng)
    if how == "dirichlet":
        return split_dirichlet(labels, n_servers, alpha_dirichlet, rng)
    if how == "shards":
        return split_shards(labels, n_servers, shards_per_server, rng)
    raise ValueError(f"unknown partition {how!r}; choose from {PARTITIONS}")
