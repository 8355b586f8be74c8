"""The paper's Gaussian split (the original's draws, exactly), its fingerprints, and the other partitions."""

import random

import numpy as np
import pytest

from asyncfl.core import partitions
from asyncfl.core import split as split_dataset
from asyncfl.core.split import (
    SplitRefused,
    SplitSettings,
    class_count_table,
    make_split,
    original_gaussian_split,
    shard_fingerprints,
)


def reference_split(labels, n_servers, stdev, seed):
    """The original algorithm as the issue describes it, written plainly with lists and the module-level
    generator: seed once, indices grouped by label in dataset order, per class n-1 clipped Gaussian
    draws cut to what remains, the last server the rest, shuffle, then sample from the remaining list."""
    random.seed(seed)
    shards = [[] for _ in range(n_servers)]
    for c in sorted(set(labels.tolist())):
        remaining = [i for i, label in enumerate(labels.tolist()) if label == c]
        count = len(remaining)
        mean = count / n_servers
        draws = [int(max(0, min(random.gauss(mean, stdev), count))) for _ in range(n_servers - 1)]
        shares, left = [], count
        for d in draws:
            d = min(d, left)
            shares.append(d)
            left -= d
        shares.append(left)
        random.shuffle(shares)
        for j in range(n_servers):
            chosen = random.sample(remaining, shares[j])
            shards[j] += chosen
            taken = set(chosen)
            remaining = [i for i in remaining if i not in taken]
    return [sorted(s) for s in shards]


def synthetic_labels(n, seed):
    """Labels in a shuffled dataset order with unequal classes (as a real training set has)."""
    rng = np.random.default_rng(seed)
    return rng.choice(10, size=n, p=np.linspace(0.05, 0.15, 10) / np.linspace(0.05, 0.15, 10).sum())


@pytest.mark.parametrize("n_servers,stdev,seed", [(1, 0, 42), (4, 0, 42), (4, 60, 42), (4, 600, 42), (4, 10000, 42),
                                                  (7, 30, 3), (32, 5, 11)])
def test_the_original_split_is_the_reference_draw_for_draw(n_servers, stdev, seed):
    # Prepare: 3,000 labels; sample() switches algorithm with the population's size, both are crossed.
    labels = synthetic_labels(3000, seed)
    # Execute
    fast = original_gaussian_split(labels, n_servers, stdev, random.Random(seed))
    slow = reference_split(labels, n_servers, stdev, seed)
    # Assert: the same index sets, server by server.
    assert [s.tolist() for s in fast] == slow


@pytest.mark.parametrize("n_servers,stdev", [(1, 0), (4, 0), (4, 600), (7, 10000), (32, 600)])
def test_shards_are_disjoint_and_complete(n_servers, stdev):
    labels = np.repeat(np.arange(10), 600)
    shards = original_gaussian_split(labels, n_servers, stdev, random.Random(1))
    assert len(shards) == n_servers
    assert np.array_equal(np.sort(np.concatenate(shards)), np.arange(len(labels)))


def test_zero_stdev_is_near_even():
    labels = np.repeat(np.arange(10), 600)
    table = class_count_table(labels, original_gaussian_split(labels, 7, 0, random.Random(0)), 10)
    # 600 / 7 = 85.7: six servers get 85, the remainder (90) lands on one of them, per class.
    assert table.min() == 85 and table.max() == 90
    assert (np.sort(table, axis=0)[:6] == 85).all()  # per class (column): six servers at 85


def test_large_stdev_leaves_some_server_without_a_class():
    labels = np.repeat(np.arange(10), 600)
    table = class_count_table(labels, original_gaussian_split(labels, 4, 10000, random.Random(0)), 10)
    assert (table == 0).any()
    assert (table.sum(axis=0) == 600).all()


def test_invalid_arguments_are_refused():
    with pytest.raises(ValueError):
        original_gaussian_split(np.arange(10) % 2, 0, 0, random.Random(0))
    with pytest.raises(ValueError):
        original_gaussian_split(np.arange(10) % 2, 2, -1, random.Random(0))


def test_fingerprints_are_stable_and_tell_splits_apart():
    labels = np.repeat(np.arange(10), 300)
    settings = SplitSettings(n_servers=4, stdev=60)
    _, a = make_split(settings, labels, 10, "synthetic", "test")
    _, b = make_split(settings, labels, 10, "synthetic", "test")
    _, other_seed = make_split(SplitSettings(n_servers=4, stdev=60, split_seed=43), labels, 10, "synthetic", "test")
    assert a["fingerprints"] == b["fingerprints"] and a["fingerprint_digest"] == b["fingerprint_digest"]
    assert a["fingerprints"]["index_sha256"] != other_seed["fingerprints"]["index_sha256"]
    # The hash is of the sorted indices as decimals joined by commas.
    shards = original_gaussian_split(labels, 4, 60, random.Random(42))
    import hashlib
    assert a["fingerprints"]["index_sha256"][2] == hashlib.sha256(",".join(map(str, shards[2])).encode()).hexdigest()
    assert a["fingerprints"]["class_counts"] == class_count_table(labels, shards, 10).tolist()
    assert shard_fingerprints(labels, shards, 10) == a["fingerprints"]


def test_a_shard_under_one_batch_is_refused_naming_the_server():
    # Prepare: 40 samples a class; with D far above that, some server ends up with (almost) nothing.
    labels = np.repeat(np.arange(10), 40)
    refused = [seed for seed in range(20) if _refused(labels, seed)]
    # Assert: some seeds give such a split, and the message names a server and what to change.
    assert refused
    with pytest.raises(SplitRefused, match=r"server \d+ has \d+ samples.*--stdev"):
        make_split(SplitSettings(n_servers=4, stdev=10000, split_seed=refused[0]), labels, 10, "synthetic", "test")


def _refused(labels, seed):
    try:
        make_split(SplitSettings(n_servers=4, stdev=10000, split_seed=seed), labels, 10, "synthetic", "test")
        return False
    except SplitRefused:
        return True


def test_paper_units_scale_d_by_class_size():
    labels = np.repeat(np.arange(10), 400)  # mnist-5k's 400 a class
    _, split = make_split(SplitSettings(stdev=600, stdev_units="paper"), labels, 10, "x", "y")
    assert split["stdev_samples"] == 40 and split["stdev"] == 600
    _, severe = make_split(SplitSettings(stdev=10000, stdev_units="paper", min_shard_samples=0), labels, 10, "x", "y")
    assert severe["stdev_samples"] == 667
    _, as_given = make_split(SplitSettings(stdev=600), labels, 10, "x", "y")
    assert as_given["stdev_samples"] == 600


def test_dirichlet_split_is_a_seeded_partition_and_concentrates_with_small_alpha():
    # Prepare
    labels = np.repeat(np.arange(10), 400)
    # Execute
    shards = partitions.split_dirichlet(labels, 4, 0.1, np.random.default_rng(3))
    again = partitions.split_dirichlet(labels, 4, 0.1, np.random.default_rng(3))
    even = partitions.split_dirichlet(labels, 4, 1000.0, np.random.default_rng(3))
    # Assert: disjoint, complete, deterministic; small alpha leaves classes out, a large one does not.
    assert np.array_equal(np.sort(np.concatenate(shards)), np.arange(len(labels)))
    assert all(np.array_equal(a, b) for a, b in zip(shards, again))
    table = split_dataset.class_count_table(labels, shards, 10)
    assert (table == 0).sum() >= 10
    even_table = split_dataset.class_count_table(labels, even, 10)
    assert (even_table > 60).all() and (even_table < 140).all()


def test_dirichlet_counts_sum_to_each_class():
    counts = partitions.dirichlet_class_counts(np.array([7, 400, 0]), 3, 0.5, np.random.default_rng(0))
    assert counts.sum(axis=1).tolist() == [7, 400, 0] and (counts >= 0).all()


def test_shards_give_each_server_few_classes():
    labels = np.repeat(np.arange(10), 400)
    shards = partitions.split_shards(labels, 4, 2, np.random.default_rng(1))
    assert np.array_equal(np.sort(np.concatenate(shards)), np.arange(len(labels)))
    assert [len(s) for s in shards] == [1000] * 4  # 8 shards of 500
    table = split_dataset.class_count_table(labels, shards, 10)
    assert ((table > 0).sum(axis=1) <= 4).all()  # two shards of 500 span at most 2 + 2 classes of 400


def test_partition_dispatches_and_refuses_unknown_names():
    labels = np.repeat(np.arange(10), 40)
    gaussian = partitions.get("gaussian").draw(labels, 4, 7, 5.0, SplitSettings())
    direct = original_gaussian_split(labels, 4, 5.0, random.Random(7))
    assert all(np.array_equal(a, b) for a, b in zip(gaussian, direct))
    with pytest.raises(ValueError):
        partitions.get("zipf")
    # Each partition's record names what it read, and is described and labelled by the registry alone.
    for name in partitions.NAMES:
        shards, record = make_split(SplitSettings(partition=name, stdev=5.0), labels, 10, "toy", "test")
        assert sum(map(len, shards)) == len(labels)
        assert all(option in record for option in partitions.get(name).options)
        assert partitions.describe(record).startswith(name) and partitions.label(record).startswith(name)
