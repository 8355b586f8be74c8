"""Async FedAvg arithmetic, against hand-computed values."""

import torch

from src import aggregation


def sd(a, b):
    return {"w": torch.tensor(a, dtype=torch.float32), "b": torch.tensor(b, dtype=torch.float32)}


def test_async_fedavg_adds_a_quarter_of_the_update():
    # Prepare: global moved on since the snapshot "old" was taken.
    glob, old, new = sd([1.0, 2.0], [0.5]), sd([0.0, 2.0], [1.0]), sd([4.0, -2.0], [3.0])
    # Execute
    out = aggregation.async_fedavg(glob, old, new, 4)
    # Assert: global + (new - old) / 4 = [1 + 1, 2 - 1], [0.5 + 0.5]
    assert torch.equal(out["w"], torch.tensor([2.0, 1.0]))
    assert torch.equal(out["b"], torch.tensor([1.0]))


def test_functions_do_not_touch_their_inputs():
    glob, old, new = sd([1.0, 2.0], [0.5]), sd([0.0, 2.0], [1.0]), sd([4.0, -2.0], [3.0])
    copies = [{k: v.clone() for k, v in x.items()} for x in (glob, old, new)]
    aggregation.async_fedavg(glob, old, new, 3)
    aggregation.scale(glob, 2.0)
    for x, c in zip((glob, old, new), copies):
        assert all(torch.equal(x[k], c[k]) for k in x)


def test_n_updates_from_one_snapshot_average():
    # n servers all start from the same model and all report: the result is their mean (FedAvg).
    start = sd([0.0, 0.0], [0.0])
    news = [sd([1.0, 3.0], [2.0]), sd([3.0, 1.0], [4.0]), sd([2.0, 2.0], [0.0])]
    glob = start
    for new in news:
        glob = aggregation.async_fedavg(glob, start, new, len(news))
    assert torch.allclose(glob["w"], torch.tensor([2.0, 2.0]))
    assert torch.allclose(glob["b"], torch.tensor([2.0]))


def test_delta_scale_add():
    a, b = sd([1.0, 1.0], [1.0]), sd([3.0, 0.0], [1.0])
    assert torch.equal(aggregation.delta(a, b)["w"], torch.tensor([2.0, -1.0]))
    assert torch.equal(aggregation.scale(b, 0.5)["w"], torch.tensor([1.5, 0.0]))
    assert torch.equal(aggregation.add(a, b)["b"], torch.tensor([2.0]))
