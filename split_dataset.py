"""Print how a split shares a dataset's classes among data servers; trains nothing.

    python split_dataset.py --n-servers 4 --stdev 600 --dataset mnist-5k
    python split_dataset.py --n-servers 4 --partition dirichlet --alpha-dirichlet 0.3
    python split_dataset.py --n-servers 4 --partition shards --shards-per-server 2

Uses exactly the split that ``src/servers.py`` makes for the same dataset, server count, partition
settings and seed.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import tyro

from src import data
from src.servers import describe_split, split_record
from src.split_dataset import class_count_table, format_table, partition


@dataclass
class Args:
    n_servers: int = 4  # number of data servers to split over
    stdev: float = 0.0  # D: standard deviation of each server's per-class share, in samples (0 = even); --partition gaussian only
    partition: Literal["gaussian", "dirichlet", "shards"] = "gaussian"  # the study's Gaussian D, Dirichlet proportions, or label-sorted shards
    alpha_dirichlet: float = 0.5  # --partition dirichlet: concentration (small = each class on few servers)
    shards_per_server: int = 2  # --partition shards: label-sorted shards per server
    dataset: data.DatasetName = data.DEFAULT_DATASET  # mnist-5k (offline), mnist (download) or fashion-mnist
    data_dir: str = "data"  # where downloaded datasets are stored
    seed: int = 0  # split seed; servers.py uses the same default


def main(args: Args) -> int:
    try:
        ds = data.load(args.dataset, args.data_dir)
    except data.DatasetUnavailable as e:
        print(f"split_dataset: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        shards = partition(ds.train_labels, args.n_servers, args.partition, np.random.default_rng(args.seed),
                           args.stdev, args.alpha_dirichlet, args.shards_per_server)
    except ValueError as e:
        print(f"split_dataset: {e}", file=sys.stderr)
        return 2
    split_s = time.perf_counter() - t0
    table = class_count_table(ds.train_labels, shards, ds.n_classes)
    print(f"{ds.name}: {len(ds.train_labels)} training samples over {args.n_servers} servers, "
          f"{describe_split(split_record(args, ds))}, seed={args.seed} (split in {split_s * 1000:.1f} ms)")
    print(format_table(table))
    missing = [(s, np.flatnonzero(table[s] == 0).tolist()) for s in range(args.n_servers) if (table[s] == 0).any()]
    for s, classes in missing:
        print(f"server {s} has no samples of class(es) {classes}")
    return 0


if __name__ == "__main__":
    sys.exit(main(tyro.cli(Args, description=__doc__)))
