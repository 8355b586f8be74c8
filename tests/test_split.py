"""The paper's Gaussian split: invariants that every D, server count and seed must keep."""

import numpy as np
import pytest

from src import split_dataset
from src.split_dataset import class_count_table, gaussian_class_counts, split_indices


def labels_600_per_class():
    return np.repeat(np.arange(10), 600)


@pytest.mark.parametrize("n_servers,stdev", [(1, 0), (4, 0), (4, 600), (7, 10000), (32, 600)])
def test_shards_are_disjoint_and_complete(n_servers, stdev):
    # Prepare
    labels = labels_600_per_class()
    # Execute
    shards = split_indices(labels, n_servers, stdev, np.random.default_rng(1))
    # Assert
    assert len(shards) == n_servers
    joined = np.concatenate(shards)
    assert len(joined) == len(labels)
    assert np.array_equal(np.sort(joined), np.arange(len(labels)))


def test_same_seed_same_split_other_seed_other_split():
    labels = labels_600_per_class()
    a = split_indices(labels, 4, 600, np.random.default_rng(7))
    b = split_indices(labels, 4, 600, np.random.default_rng(7))
    c = split_indices(labels, 4, 600, np.random.default_rng(8))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_zero_stdev_is_near_even():
    labels = labels_600_per_class()
    table = class_count_table(labels, split_indices(labels, 7, 0, np.random.default_rng(0)), 10)
    # 600 / 7 = 85.7: six servers get 85, the remainder (90) lands on one of them, per class.
    assert table.min() == 85 and table.max() == 90
    assert (np.sort(table, axis=1)[:, :6] == 85).all()


def test_large_stdev_leaves_some_server_without_a_class():
    labels = labels_600_per_class()
    table = class_count_table(labels, split_indices(labels, 4, 10000, np.random.default_rng(0)), 10)
    assert (table == 0).any()
    assert (table.sum(axis=0) == 600).all()


def test_mild_stdev_is_uneven_but_keeps_totals():
    labels = labels_600_per_class()
    table = class_count_table(labels, split_indices(labels, 4, 60, np.random.default_rng(3)), 10)
    assert (table.sum(axis=0) == 600).all()
    assert table.std() > 20  # D=60 on 150-sample shares: visibly skewed


def test_counts_are_clipped_and_granted_in_order():
    # Prepare: one class of 10 samples, a D so large that draws leave [0, 10] almost always.
    counts = gaussian_class_counts(np.array([10] * 200), 3, 1e6, np.random.default_rng(0))
    # Assert: never negative, never more than the class, rows always sum to the class count.
    assert counts.min() >= 0 and counts.max() <= 10
    assert (counts.sum(axis=1) == 10).all()
    # Both "one server takes everything" and "some server gets nothing" happen.
    assert (counts.max(axis=1) == 10).any() and (counts.min(axis=1) == 0).all()


def test_invalid_arguments_are_refused():
    with pytest.raises(ValueError):
        gaussian_class_counts(np.array([10]), 0, 0, np.random.default_rng(0))
    with pytest.raises(ValueError):
        gaussian_class_counts(np.array([10]), 2, -1, np.random.default_rng(0))


def test_dirichlet_split_is_a_seeded_partition_and_concentrates_with_small_alpha():
    # Prepare
    labels = np.repeat(np.arange(10), 400)
    # Execute
    shards = split_dataset.split_dirichlet(labels, 4, 0.1, np.random.default_rng(3))
    again = split_dataset.split_dirichlet(labels, 4, 0.1, np.random.default_rng(3))
    even = split_dataset.split_dirichlet(labels, 4, 1000.0, np.random.default_rng(3))
    # Assert: disjoint, complete, deterministic; small alpha leaves classes out, a large one does not.
    assert np.array_equal(np.sort(np.concatenate(shards)), np.arange(len(labels)))
    assert all(np.array_equal(a, b) for a, b in zip(shards, again))
    table = split_dataset.class_count_table(labels, shards, 10)
    assert (table == 0).sum() >= 10
    even_table = split_dataset.class_count_table(labels, even, 10)
    assert (even_table > 60).all() and (even_table < 140).all()


def test_dirichlet_counts_sum_to_each_class():
    counts = split_dataset.dirichlet_class_counts(np.array([7, 400, 0]), 3, 0.5, np.random.default_rng(0))
    assert counts.sum(axis=1).tolist() == [7, 400, 0] and (counts >= 0).all()


def test_shards_give_each_server_few_classes():
    labels = np.repeat(np.arange(10), 400)
    shards = split_dataset.split_shards(labels, 4, 2, np.random.default_rng(1))
    assert np.array_equal(np.sort(np.concatenate(shards)), np.arange(len(labels)))
    assert [len(s) for s in shards] == [1000] * 4  # 8 shards of 500
    table = split_dataset.class_count_table(labels, shards, 10)
    assert ((table > 0).sum(axis=1) <= 4).all()  # two shards of 500 span at most 2 + 2 classes of 400


def test_partition_dispatches_and_refuses_unknown_names():
    labels = np.repeat(np.arange(10), 40)
    gaussian = split_dataset.partition(labels, 4, "gaussian", np.random.default_rng(0), stdev=5.0)
    direct = split_dataset.split_indices(labels, 4, 5.0, np.random.default_rng(0))
    assert all(np.array_equal(a, b) for a, b in zip(gaussian, direct))
    with pytest.raises(ValueError):
        split_dataset.partition(labels, 4, "zipf", np.random.default_rng(0))
