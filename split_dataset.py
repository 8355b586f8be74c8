"""Print how a split shares a dataset's classes among data servers, with its fingerprints; trains nothing.

    python split_dataset.py --n-servers 4 --stdev 600 --dataset mnist-5k
    python split_dataset.py --dataset fashion-mnist --n-servers 4 --stdev 600 --json
    python split_dataset.py --n-servers 4 --partition dirichlet --alpha-dirichlet 0.3

Uses exactly the split that ``src/asyncfl/server/main.py`` makes for the same dataset and split settings (the
Gaussian one draws what the original drew with ``random.seed(--split-seed)``, 42 by default). ``--json``
prints one JSON object: ``class_counts`` (per server, 10 integers), ``index_sha256`` (per server, the
SHA-256 of its sorted training-set indices as decimals joined by commas) and the split's settings. Exit 2
when the split would leave a server under ``--min-shard-samples``.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass

import numpy as np
import tyro

from asyncfl.core import data, datasets
from asyncfl.core.split import SplitRefused, SplitSettings, describe_split, format_table, make_split


@dataclass
class Args(SplitSettings):
    dataset: datasets.Name = datasets.DEFAULT  # a registered dataset (src/asyncfl/core/datasets.py)
    data_dir: str = "data"  # where downloaded datasets are stored
    json: bool = False  # print one JSON object (class counts, index fingerprints, settings) instead of the table


def main(args: Args) -> int:
    try:
        ds = data.load(args.dataset, args.data_dir)
        t0 = time.perf_counter()
        shards, split = make_split(args, ds.train_labels, ds.n_classes, ds.name, ds.source)
        split_s = time.perf_counter() - t0
    except SplitRefused as e:
        print(f"split_dataset: refused: {e}", file=sys.stderr)
        return 2
    except (ValueError, data.DatasetUnavailable) as e:
        print(f"split_dataset: {e}", file=sys.stderr)
        return 2
    fingerprints = split.pop("fingerprints")
    if args.json:
        print(json.dumps({**fingerprints, **split}))
        return 0
    table = np.array(fingerprints["class_counts"])
    print(f"{ds.name}: {len(ds.train_labels)} training samples over {args.n_servers} servers, "
          f"{describe_split(split)}, split seed {args.split_seed} (split in {split_s * 1000:.1f} ms), "
          f"fingerprint {split['fingerprint_digest']}")
    print(format_table(table))
    for s in range(args.n_servers):
        missing = np.flatnonzero(table[s] == 0).tolist()
        if missing:
            print(f"server {s} has no samples of class(es) {missing}")
    return 0


if __name__ == "__main__":
    sys.exit(main(tyro.cli(Args, prog="split_dataset.py", description=__doc__)))
