"""The paper's skewed split of a labelled dataset over data servers (pure functions).

For every class with count n_c, the first n_servers - 1 servers draw their share from a Gaussian with
mean n_c / n_servers and standard deviation D (the ``stdev``), clipped to [0, n_c] and truncated to an
integer; draws are granted in order until the class runs out, the last server takes what remains, and
the shares are shuffled among the servers. ``original_gaussian_split`` draws exactly what the original
code drew from Python's ``random`` seeded with the split seed (42 by default, the original's), so the
same labels give the same index sets. D = 0 gives a near-even split; D = 600 a mild imbalance on MNIST;
D = 10000 a severe one where some servers lack whole classes.

Two other partitions compare with it (``partition``): ``dirichlet`` (per-class proportions drawn from a
Dirichlet(alpha) distribution) and ``shards`` (label-sorted shards, a fixed number per server).
``shard_fingerprints`` names a split by its class counts and index hashes. The command-line table
printer is the top-level ``split_dataset.py``.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Literal

import numpy as np

DEFAULT_SPLIT_SEED = 42  # the original's: split_dataset.py called random.seed(42) when imported
StdevUnits = Literal["samples", "paper"]


@dataclass
class SplitSettings:
    """How the training set is split over the data servers (flags shared by server/main.py and split_dataset.py)."""

    n_servers: int = 4  # number of data servers
    partition: Literal["gaussian", "dirichlet", "shards"] = "gaussian"  # the study's Gaussian D, Dirichlet proportions, or label-sorted shards
    stdev: float = 0.0  # D: standard deviation of each server's per-class share (--partition gaussian), in --stdev-units
    stdev_units: StdevUnits = "samples"  # samples: D as given; paper: D in samples of an MNIST class (6,000), scaled to this dataset's class size (600 -> 40 on mnist-5k)
    split_seed: int = DEFAULT_SPLIT_SEED  # seed of the split alone (the original's 42); --seed leaves it alone
    alpha_dirichlet: float = 0.5  # --partition dirichlet: concentration (small = each class on few servers)
    shards_per_server: int = 2  # --partition shards: label-sorted shards per server (2 = about two classes each)
    min_shard_samples: int = 32  # refuse a split that leaves a server fewer samples than this (one batch of the default 32)


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


def shard_fingerprints(labels: np.ndarray, shards: list[np.ndarray], n_classes: int) -> dict:
    """What lets owners on different hosts check they hold the shards they should: per server, its class
    counts and the SHA-256 of its sorted training-set indices written as decimals joined by commas."""
    return {
        "class_counts": class_count_table(labels, shards, n_classes).tolist(),
        "index_sha256": [index_sha256(s) for s in shards],
    }


def index_sha256(indices: np.ndarray) -> str:
    return hashlib.sha256(",".join(map(str, np.sort(np.asarray(indices)).tolist())).encode()).hexdigest()


def fingerprint_digest(fingerprints: dict) -> str:
    """One short name for a whole split (the first 12 hex digits of the SHA-256 of the per-server hashes)."""
    return hashlib.sha256(",".join(fingerprints["index_sha256"]).encode()).hexdigest()[:12]


def small_shards(shards: list[np.ndarray], min_samples: int) -> list[int]:
    """Servers whose shard has fewer than ``min_samples`` samples (one batch): they could not train."""
    return [i for i, s in enumerate(shards) if len(s) < min_samples]


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


def partition(labels: np.ndarray, n_servers: int, how: str, split_seed: int = DEFAULT_SPLIT_SEED, stdev: float = 0.0,
              alpha_dirichlet: float = 0.5, shards_per_server: int = 2) -> list[np.ndarray]:
    """The split named by ``how`` (``--partition``), seeded by ``split_seed`` alone: gaussian (the study's
    D, drawn exactly as the original drew it), dirichlet or shards."""
    if how == "gaussian":
        return original_gaussian_split(labels, n_servers, stdev, random.Random(split_seed))
    if how == "dirichlet":
        return split_dirichlet(labels, n_servers, alpha_dirichlet, np.random.default_rng(split_seed))
    if how == "shards":
        return split_shards(labels, n_servers, shards_per_server, np.random.default_rng(split_seed))
    raise ValueError(f"unknown partition {how!r}; choose from {PARTITIONS}")


# ---- Split settings, as the servers, the split CLI and the launcher take them ------------------------------

PAPER_CLASS_SIZE = 6000  # samples per class of MNIST's training set, the paper's unit of D


def stdev_in_samples(settings: SplitSettings, train_labels: np.ndarray) -> float:
    """D as the split uses it: in ``paper`` units scaled by this dataset's mean class size over MNIST's
    (rounded to whole samples), else as given."""
    if settings.stdev_units == "samples":
        return float(settings.stdev)
    mean_class = len(train_labels) / len(np.unique(train_labels))
    return float(round(settings.stdev * mean_class / PAPER_CLASS_SIZE))


class SplitRefused(ValueError):
    """The split leaves some server unable to train; nothing should start."""


def make_split(settings: SplitSettings, train_labels: np.ndarray, n_classes: int, dataset: str,
               dataset_source: str) -> tuple[list[np.ndarray], dict]:
    """The shards and the record of how they were made (what hello reports and config.json keeps, with the
    fingerprints). Raises SplitRefused for a shard under ``min_shard_samples``."""
    stdev = stdev_in_samples(settings, train_labels)
    shards = partition(train_labels, settings.n_servers, settings.partition, settings.split_seed, stdev,
                       settings.alpha_dirichlet, settings.shards_per_server)
    record = {"dataset": dataset, "dataset_source": dataset_source, "n_servers": settings.n_servers,
              "partition": settings.partition, "split_seed": settings.split_seed}
    if settings.partition == "gaussian":
        record.update(stdev=settings.stdev, stdev_units=settings.stdev_units, stdev_samples=stdev)
    if settings.partition == "dirichlet":
        record["alpha_dirichlet"] = settings.alpha_dirichlet
    if settings.partition == "shards":
        record["shards_per_server"] = settings.shards_per_server
    fingerprints = shard_fingerprints(train_labels, shards, n_classes)
    record["fingerprint_digest"] = fingerprint_digest(fingerprints)
    small = small_shards(shards, settings.min_shard_samples)
    if small:
        sizes = ", ".join(f"server {i} has {len(shards[i])}" for i in small)
        raise SplitRefused(
            f"the split ({describe_split(record)}, split seed {settings.split_seed}, {settings.n_servers} servers of "
            f"{len(train_labels)} {dataset} samples) leaves too little data: {sizes} samples, under one batch "
            f"({settings.min_shard_samples}). Lower --stdev, use fewer --n-servers, try another --split-seed, or "
            f"lower --min-shard-samples with --batch-size")
    return shards, {**record, "fingerprints": fingerprints}


def describe_split(split: dict) -> str:
    if split["partition"] == "gaussian":
        if split.get("stdev_units") == "paper":
            return f"gaussian, D={split['stdev']:g} in the paper's units ({split['stdev_samples']:g} samples here)"
        return f"gaussian, D={split.get('stdev', 0):g}"
    return {"dirichlet": f"dirichlet, alpha={split.get('alpha_dirichlet', 0):g}",
            "shards": f"shards, {split.get('shards_per_server')} per server",
            "own": "the owner's own data"}.get(split["partition"], split["partition"])


def shard_fingerprint(split: dict, index: int) -> dict:
    """This owner's part of the split's fingerprints (see split_dataset.shard_fingerprints): its class
    counts and the SHA-256 of its indices, or of its own data's bytes."""
    if "fingerprints" in split:
        fp = split["fingerprints"]
        return {"class_counts": fp["class_counts"][index], "sha256": fp["index_sha256"][index]}
    return {"sha256": split.get("data_sha256")}
