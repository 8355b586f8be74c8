"""The partitions of a training set over data servers (``--partition``), one registry: each a name, the
split settings it reads (recorded in config.json's ``dataset``), how it draws the shards, and how it is
described and labelled. Adding one is adding its draw function and its ``Partition`` here, and a test.

- ``gaussian``: the study's. For every class with count n_c, the first n_servers - 1 servers draw their share
  from a Gaussian with mean n_c / n_servers and standard deviation D (``stdev``), drawn exactly as the
  original drew it (``original_gaussian_split``).
- ``dirichlet``: per-class proportions from a Dirichlet(alpha) distribution.
- ``shards``: label-sorted shards, a fixed number per server.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


def original_gaussian_split(labels: np.ndarray, n_servers: int, stdev: float, rng: random.Random) -> list[np.ndarray]:
    """The original's split, draw for draw: what it gave with ``random.seed(s)``, this gives with
    ``random.Random(s)`` (the generator fresh, nothing drawn from it before). Shards sorted ascending.

    For each class in label order (its indices ascending): n-1 draws ``int(max(0, min(gauss(mean, D),
    count)))``, each cut to what remains of the class, the last server the rest; ``shuffle`` of the n
    shares; then per server ``sample(remaining indices, share)``. ``random.sample`` draws positions from
    the population's size and k alone, so positions drawn on a range and applied to a numpy array of the
    remaining indices (kept ascending by ``np.delete``) select exactly what the list version selects."""
    labels = np.asarray(labels)
    if n_servers < 1:
        raise ValueError("n_servers must be at least 1")
    if stdev < 0:
        raise ValueError("stdev must not be negative")
    pieces: list[list[np.ndarray]] = [[] for _ in range(n_servers)]
    by_label = np.argsort(labels, kind="stable")
    classes, class_counts = np.unique(labels, return_counts=True)
    for indices in np.split(by_label, np.cumsum(class_counts)[:-1]):
        count = len(indices)
        mean = count / n_servers
        shares, remaining = [], count
        for _ in range(n_servers - 1):
            share = min(int(max(0, min(rng.gauss(mean, stdev), count))), remaining)
            shares.append(share)
            remaining -= share
        shares.append(remaining)
        rng.shuffle(shares)
        for server, share in enumerate(shares):
            positions = rng.sample(range(len(indices)), share)
            pieces[server].append(indices[positions])
            indices = np.delete(indices, positions)
    return [np.sort(np.concatenate(p)) if p else np.empty(0, dtype=np.int64) for p in pieces]


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


@dataclass(frozen=True)
class Partition:
    name: str
    options: tuple[str, ...]  # the SplitSettings fields it reads, recorded with the split
    draw: Callable[..., list[np.ndarray]]  # (labels, n_servers, split_seed, stdev in samples, settings) -> shards
    describe: Callable[[dict], str]  # a split record in words (server logs, the refusal of a split)
    label: Callable[[dict], str]  # the analysis's name of it; the study's D is a column of its own


def _describe_gaussian(split: dict) -> str:
    if split.get("stdev_units", "samples") != "samples":  # the paper's units
        return f"gaussian, D={split['stdev']:g} in the paper's units ({split['stdev_samples']:g} samples here)"
    return f"gaussian, D={split.get('stdev', 0):g}"


REGISTRY = {p.name: p for p in (
    Partition("gaussian", ("stdev", "stdev_units"),
              lambda labels, n, seed, stdev, s: original_gaussian_split(labels, n, stdev, random.Random(seed)),
              _describe_gaussian, lambda split: "gaussian"),
    Partition("dirichlet", ("alpha_dirichlet",),
              lambda labels, n, seed, stdev, s: split_dirichlet(labels, n, s.alpha_dirichlet, np.random.default_rng(seed)),
              lambda split: f"dirichlet, alpha={split.get('alpha_dirichlet', 0):g}",
              lambda split: f"dirichlet({split['alpha_dirichlet']:g})"),
    Partition("shards", ("shards_per_server",),
              lambda labels, n, seed, stdev, s: split_shards(labels, n, s.shards_per_server, np.random.default_rng(seed)),
              lambda split: f"shards, {split.get('shards_per_server')} per server",
              lambda split: f"shards({split['shards_per_server']})"),
)}
NAMES = tuple(REGISTRY)
OWN = "own"  # not a partition: an owner serving its own data (--shard)


def get(name: str) -> Partition:
    if name not in REGISTRY:
        raise ValueError(f"unknown partition {name!r}; choose from {', '.join(NAMES)}")
    return REGISTRY[name]


def describe(split: dict) -> str:
    return "the owner's own data" if split["partition"] == OWN else get(split["partition"]).describe(split)


def label(split: dict) -> str:
    name = split.get("partition", "gaussian")
    return name if name not in REGISTRY else get(name).label(split)
