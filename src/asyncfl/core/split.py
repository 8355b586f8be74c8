"""The paper's skewed split of a labelled dataset over data servers (pure functions).

For every class with count n_c, the first n_servers - 1 servers draw their share from a Gaussian with
mean n_c / n_servers and standard deviation D (the ``stdev``), clipped to [0, n_c] and truncated to an
integer; draws are granted in order until the class runs out, the last server takes what remains, and
the shares are shuffled among the servers. ``original_gaussian_split`` draws exactly what the original
code drew from Python's ``random`` seeded with the split seed (42 by default, the original's), so the
same labels give the same index sets. D = 0 gives a near-even split; D = 600 a mild imbalance on MNIST;
D = 10000 a severe one where some servers lack whole classes.

The partitions themselves (the study's and the two that compare with it) are in ``core/partitions.py``.
``shard_fingerprints`` names a split by its class counts and index hashes. The command-line table
printer is the top-level ``split_dataset.py``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import numpy as np

from asyncfl.core import partitions
from asyncfl.core.partitions import original_gaussian_split  # noqa: F401  (the study's split, as split.py always offered it)

DEFAULT_SPLIT_SEED = 42  # the original's: split_dataset.py called random.seed(42) when imported
StdevUnits = Literal["samples", "paper"]


@dataclass
class SplitSettings:
    """How the training set is split over the data servers (flags shared by server/main.py and split_dataset.py)."""

    n_servers: int = 4  # number of data servers
    partition: Literal[partitions.NAMES] = "gaussian"  # type: ignore[valid-type]  # the study's Gaussian D, Dirichlet proportions, or label-sorted shards
    stdev: float = 0.0  # D: standard deviation of each server's per-class share (--partition gaussian), in --stdev-units
    stdev_units: StdevUnits = "samples"  # samples: D as given; paper: D in samples of an MNIST class (6,000), scaled to this dataset's class size (600 -> 40 on mnist-5k)
    split_seed: int = DEFAULT_SPLIT_SEED  # seed of the split alone (the original's 42); --seed leaves it alone
    alpha_dirichlet: float = 0.5  # --partition dirichlet: concentration (small = each class on few servers)
    shards_per_server: int = 2  # --partition shards: label-sorted shards per server (2 = about two classes each)
    min_shard_samples: int = 32  # refuse a split that leaves a server fewer samples than this (one batch of the default 32)


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
    how = partitions.get(settings.partition)
    shards = how.draw(train_labels, settings.n_servers, settings.split_seed, stdev, settings)
    record = {"dataset": dataset, "dataset_source": dataset_source, "n_servers": settings.n_servers,
              "partition": settings.partition, "split_seed": settings.split_seed,
              **{name: getattr(settings, name) for name in how.options}}
    if "stdev" in how.options:
        record["stdev_samples"] = stdev
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
    return partitions.describe(split)


def shard_fingerprint(split: dict, index: int) -> dict:
    """This owner's part of the split's fingerprints (see split_dataset.shard_fingerprints): its class
    counts and the SHA-256 of its indices, or of its own data's bytes."""
    if "fingerprints" in split:
        fp = split["fingerprints"]
        return {"class_counts": fp["class_counts"][index], "sha256": fp["index_sha256"][index]}
    return {"sha256": split.get("data_sha256")}
