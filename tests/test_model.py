"""Model weights in one buffer (FlatWeights), and the checks every received model goes through."""

import pytest
import torch

from asyncfl.core.model import (
    FlatWeights,
    Net,
    check_weights,
    copy_into,
    flatten,
    flatten_parameters,
    initial_weights,
    loss_fn,
    weight_spec,
)
from asyncfl.core.task import sgd_step

SPEC = weight_spec()


def test_flatten_copies_into_one_buffer_in_order():
    # Prepare
    weights = initial_weights(0)
    # Execute
    flat = flatten(weights)
    # Assert: same tensors, views of one buffer, independent of the original
    assert list(flat) == list(weights)
    assert flat.flat.numel() == sum(v.numel() for v in weights.values())
    assert all(torch.equal(flat[k], weights[k]) for k in weights)
    assert all(v.untyped_storage().data_ptr() == flat.flat.untyped_storage().data_ptr() for v in flat.values())
    flat.flat.zero_()
    assert not torch.equal(flat["fc1.weight"], weights["fc1.weight"])


def test_views_must_cover_the_flat_tensor_exactly():
    with pytest.raises(ValueError):
        FlatWeights.views_of(torch.zeros(7), {"a": (2, 3)})


def test_training_a_net_with_flattened_parameters_updates_its_buffer():
    # Prepare
    torch.manual_seed(0)
    net = Net()
    weights = flatten_parameters(net)
    before = weights.flat.clone()
    # Execute: a training step as a server runs it
    loss_fn(net(torch.randn(4, 1, 28, 28)), torch.tensor([0, 1, 2, 3])).backward()
    sgd_step(list(net.parameters()), 0.1)
    # Assert: the step moved the buffer, which is still what the net computes with
    assert not torch.equal(weights.flat, before)
    assert all(p.data_ptr() == weights[k].data_ptr() for k, p in net.named_parameters())


@pytest.mark.parametrize("make", [dict, flatten], ids=["per-tensor", "flat"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_check_weights_names_the_tensor_with_a_non_finite_value(make, bad):
    weights = make({k: v.clone() for k, v in initial_weights(0).items()})
    weights["conv2.bias"][3] = bad
    with pytest.raises(ValueError, match="conv2.bias"):
        check_weights(weights, SPEC)


@pytest.mark.parametrize("make", [dict, flatten], ids=["per-tensor", "flat"])
def test_finite_values_whose_sum_overflows_pass(make):
    weights = make({k: v.clone() for k, v in initial_weights(0).items()})
    weights["fc1.weight"][0, :2] = 3e38  # the float32 sum is inf; every value is finite
    check_weights(weights, SPEC)


def test_copy_into_refuses_a_tensor_that_would_broadcast():
    dst = flatten(initial_weights(0))
    src = {**initial_weights(1), "conv1.bias": torch.ones(1)}
    with pytest.raises(ValueError, match="conv1.bias"):
        copy_into(dst, src)


@pytest.mark.parametrize("dst_flat, src_flat", [(True, True), (True, False), (False, True)])
def test_copy_into_copies_every_tensor(dst_flat, src_flat):
    dst, src = initial_weights(0), initial_weights(1)
    dst, src = (flatten(dst) if dst_flat else dst), (flatten(src) if src_flat else src)
    assert copy_into(dst, src) is dst
    assert all(torch.equal(dst[k], src[k]) for k in src)
