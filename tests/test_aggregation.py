"""Async FedAvg arithmetic, against hand-computed values."""

import pytest
import torch

from asyncfl.core import rules
from asyncfl.core.model import FlatWeights, flat_of, flatten, initial_weights
from asyncfl.core.rules import arithmetic
from asyncfl.core.rules.fedasync import FedAsyncOptions
from asyncfl.core.rules.fedbuff import FedBuffOptions


def sd(a, b):
    return {"w": torch.tensor(a, dtype=torch.float32), "b": torch.tensor(b, dtype=torch.float32)}


def test_async_fedavg_adds_a_quarter_of_the_update():
    # Prepare: global moved on since the snapshot "old" was taken.
    glob, old, new = sd([1.0, 2.0], [0.5]), sd([0.0, 2.0], [1.0]), sd([4.0, -2.0], [3.0])
    # Execute
    out = arithmetic.async_fedavg(glob, old, new, 4)
    # Assert: global + (new - old) / 4 = [1 + 1, 2 - 1], [0.5 + 0.5]
    assert torch.equal(out["w"], torch.tensor([2.0, 1.0]))
    assert torch.equal(out["b"], torch.tensor([1.0]))


def test_functions_do_not_touch_their_inputs():
    glob, old, new = sd([1.0, 2.0], [0.5]), sd([0.0, 2.0], [1.0]), sd([4.0, -2.0], [3.0])
    copies = [{k: v.clone() for k, v in x.items()} for x in (glob, old, new)]
    arithmetic.async_fedavg(glob, old, new, 3)
    arithmetic.scale(glob, 2.0)
    for x, c in zip((glob, old, new), copies):
        assert all(torch.equal(x[k], c[k]) for k in x)


def test_n_updates_from_one_snapshot_average():
    # n servers all start from the same model and all report: the result is their mean (FedAvg).
    start = sd([0.0, 0.0], [0.0])
    news = [sd([1.0, 3.0], [2.0]), sd([3.0, 1.0], [4.0]), sd([2.0, 2.0], [0.0])]
    glob = start
    for new in news:
        glob = arithmetic.async_fedavg(glob, start, new, len(news))
    assert torch.allclose(glob["w"], torch.tensor([2.0, 2.0]))
    assert torch.allclose(glob["b"], torch.tensor([2.0]))


def test_delta_scale_add():
    a, b = sd([1.0, 1.0], [1.0]), sd([3.0, 0.0], [1.0])
    assert torch.equal(arithmetic.delta(a, b)["w"], torch.tensor([2.0, -1.0]))
    assert torch.equal(arithmetic.scale(b, 0.5)["w"], torch.tensor([1.5, 0.0]))
    assert torch.equal(arithmetic.add(a, b)["b"], torch.tensor([2.0]))


# ---- the other rules: hand-computed vectors ----------------------------------------------------------


def vec(*values):
    return {"w": torch.tensor(values, dtype=torch.float32)}


def test_fedavg_weights_deltas_by_samples():
    # old (1, 1); two servers: new (3, 1) on 30 samples, (1, 5) on 10 samples.
    # global = (1,1) + 0.75*(2,0) + 0.25*(0,4) = (2.5, 2.0)
    out = arithmetic.fedavg(vec(1, 1), vec(1, 1), [vec(3, 1), vec(1, 5)], [30, 10])
    assert torch.allclose(out["w"], torch.tensor([2.5, 2.0]))


def test_fedavg_rule_holds_results_until_every_server_has_sent_one():
    rule = rules.get("fedavg")(2)
    g = vec(1, 1)
    first = rule.combine(g, rule.prepare(vec(1, 1), vec(3, 1), 30), updates_behind=0)
    assert first is None  # buffered: the global model does not change mid-round
    out = rule.combine(g, rule.prepare(vec(1, 1), vec(1, 5), 10), updates_behind=0)
    assert torch.allclose(out["w"], torch.tensor([2.5, 2.0])) and rule.pending.count == 0


def test_fedavg_on_flat_weights_matches_the_per_tensor_arithmetic_and_leaves_inputs_alone():
    # The flat path (one buffer, each result added in place as it comes) against the per-tensor one.
    torch.manual_seed(0)
    old = {"a": torch.randn(3, 4), "b": torch.randn(5)}
    news = [{k: v + torch.randn_like(v) for k, v in old.items()} for _ in range(3)]
    counts = [32, 64, 0]
    per_tensor = arithmetic.fedavg(old, old, news, counts)
    flat_old, flat_news = flatten(old), [flatten(n) for n in news]
    before = [n.flat.clone() for n in flat_news]
    rule = rules.get("fedavg")(3)
    outs = [rule.combine(flat_old, rule.prepare(flat_old, n, c), 0) for n, c in zip(flat_news, counts)]
    assert outs[0] is None and outs[1] is None and flat_of(outs[2]) is not None
    for k in old:
        assert torch.allclose(outs[2][k], per_tensor[k], atol=1e-6)
    assert all(torch.equal(n.flat, b) for n, b in zip(flat_news, before))  # the servers' replies untouched
    # Nobody trained on anything: the global model stays.
    zero = rules.get("fedavg")(1).combine(flat_old, (arithmetic.delta(flat_old, flat_news[0]), 0), 0)
    assert torch.equal(zero.flat, flat_old.flat)


@pytest.mark.parametrize("fn,gap,a,b,expected", [
    ("constant", 7, 0.5, 4, 1.0),
    ("polynomial", 0, 0.5, 4, 1.0),
    ("polynomial", 3, 0.5, 4, 0.5),  # (1+3)^-0.5
    ("polynomial", 8, 1.0, 4, 1 / 9),
    ("hinge", 4, 10.0, 4, 1.0),  # gap <= b: no discount
    ("hinge", 6, 10.0, 4, 1 / 21),  # 1 / (10 * (6 - 4) + 1)
    ("hinge", 5, 0.5, 4, 1 / 1.5),
])
def test_staleness_weights(fn, gap, a, b, expected):
    assert arithmetic.staleness_weight(fn, gap, a, b) == pytest.approx(expected)


def test_fedasync_mixes_with_the_staleness_discounted_alpha():
    # alpha 0.6, polynomial a=0.5, gap 3 -> a_t = 0.3; global (10, 0), new (0, 10) -> (7, 3)
    rule = rules.get("fedasync")(1, FedAsyncOptions(0.6, "polynomial", 0.5, 4))
    out = rule.combine(vec(10, 0), rule.prepare(vec(5, 5), vec(0, 10), 32), updates_behind=3)
    assert torch.allclose(out["w"], torch.tensor([7.0, 3.0]))
    fresh = rule.combine(vec(10, 0), vec(0, 10), updates_behind=0)  # a_t = 0.6
    assert torch.allclose(fresh["w"], torch.tensor([4.0, 6.0]))


def test_fedbuff_applies_the_mean_of_k_deltas_scaled_by_the_server_lr():
    rule = rules.get("fedbuff")(1, FedBuffOptions(buffer_size=2, server_lr=0.5))
    g = vec(0, 0)
    assert rule.combine(g, rule.prepare(vec(1, 1), vec(3, 1), 32), 0) is None  # delta (2, 0)
    out = rule.combine(g, rule.prepare(vec(0, 0), vec(0, 4), 32), 5)  # delta (0, 4); mean (1, 2) * 0.5
    assert torch.allclose(out["w"], torch.tensor([0.5, 1.0])) and rule.buffer.count == 0


def test_ssp_rule_is_the_study_rule():
    rule = rules.get("ssp")(4)
    out = rule.combine(vec(1, 1), rule.prepare(vec(0, 0), vec(4, 8), 32), 9)
    assert torch.allclose(out["w"], torch.tensor([2.0, 3.0]))


def test_bad_rule_settings_are_refused():
    with pytest.raises(ValueError):
        rules.get("fedasync")(1, FedAsyncOptions(1.5, "polynomial", 0.5, 4))
    with pytest.raises(ValueError):
        rules.get("fedasync")(1, FedAsyncOptions(0.5, "cubic", 0.5, 4))
    with pytest.raises(ValueError):
        rules.get("fedbuff")(1, FedBuffOptions(0, 1.0))


def test_flat_weights_take_the_one_buffer_path_with_the_same_result_bit_for_bit():
    # Prepare: the client keeps the global model flat (one buffer); the arithmetic must not change
    glob, old, new = (initial_weights(seed) for seed in (0, 1, 2))
    flat_glob, flat_old, flat_new = flatten(glob), flatten(old), flatten(new)
    # Execute
    per_tensor = arithmetic.async_fedavg(glob, old, new, 3)
    flat = arithmetic.async_fedavg(flat_glob, flat_old, flat_new, 3)
    # Assert
    assert isinstance(flat, FlatWeights) and not isinstance(per_tensor, FlatWeights)
    assert list(flat) == list(per_tensor)
    assert all(torch.equal(flat[k], per_tensor[k]) for k in glob)
    assert all(torch.equal(flat_glob[k], glob[k]) for k in glob)  # inputs untouched


def test_mixed_flat_and_plain_weights_take_the_per_tensor_path():
    glob, old, new = flatten(initial_weights(0)), initial_weights(1), flatten(initial_weights(2))
    out = arithmetic.async_fedavg(glob, old, new, 2)
    expected = {k: glob[k] + (new[k] - old[k]) / 2 for k in glob}
    assert all(torch.equal(out[k], expected[k]) for k in glob)


def test_the_registry_names_every_rule_once_and_their_flags_never_clash():
    from asyncfl.settings import ClientArgs

    assert rules.NAMES[0] == "ssp" and set(rules.NAMES) == set(rules.REGISTRY) >= {"ssp", "fedavg", "fedasync", "fedbuff"}
    own = [f for cls in rules.option_classes() for f in cls.__dataclass_fields__]
    assert len(own) == len(set(own)) and set(own) <= set(ClientArgs.__dataclass_fields__)
    for name in rules.NAMES:  # every rule builds from the client's defaults and says what it is
        rule = rules.build(ClientArgs(aggregation=name), 3)
        assert rule.describe()["aggregation"] == name and rules.label(rule.describe()).startswith(name)


def test_a_rule_that_brings_its_own_barrier_runs_the_gate_at_zero_and_refuses_a_server_timeout():
    from asyncfl.settings import ClientArgs

    assert rules.build(ClientArgs(aggregation="fedavg", staleness_threshold=9999), 2).staleness == 0  # the rule owns S
    assert rules.build(ClientArgs(aggregation="ssp", staleness_threshold=6), 2).staleness == 6
    with pytest.raises(ValueError, match="server-timeout-s"):
        rules.build(ClientArgs(aggregation="fedavg", server_timeout_s=5), 2)


def test_a_rule_without_a_label_of_its_own_is_labelled_by_all_its_options():
    # Prepare: a throwaway rule with two options (registering it is defining it)
    from dataclasses import dataclass

    @dataclass
    class Opts:
        momentum: float = 0.9
        warmup: int = 3

    class Momentum(rules.Rule):
        name = "test-momentum"
        Options = Opts

    try:
        # Assert: two configurations that differ in one option get different labels
        assert rules.label({"aggregation": "test-momentum", "momentum": 0.9, "warmup": 3}) == "test-momentum(momentum=0.9,warmup=3)"
        assert rules.label({"aggregation": "test-momentum", "momentum": 0.5, "warmup": 3}) != \
            rules.label({"aggregation": "test-momentum", "momentum": 0.9, "warmup": 3})
    finally:
        del rules.REGISTRY["test-momentum"]
