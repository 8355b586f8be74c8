"""Link conditions parsed once (core/conditions.py): the flags' forms, what is refused, and the one
decision of whether a run's servers need namespaces."""

import pytest

from asyncfl.core.conditions import LinkConditions, Links, link_label
from asyncfl.settings import LaunchArgs


def test_one_loss_for_every_link_or_one_per_server():
    assert Links.parse(3, loss="10%").per_server == (LinkConditions(10.0),) * 3
    per = Links.parse(3, loss="0%", losses="0 5 20", delays_ms="0,50,0", rates_mbit="0 0 10").per_server
    assert per == (LinkConditions(0, 0, 0), LinkConditions(5, 50, 0), LinkConditions(20, 0, 10))
    assert Links.parse(2).clean() and not Links.parse(2, delays_ms="0 1").clean()


@pytest.mark.parametrize("kwargs,flag", [({"loss": "10%", "losses": "0 10"}, "--losses"), ({"losses": "1 2 3"}, "--losses"),
                                         ({"loss": "100%"}, "100%"), ({"delays_ms": "-1 0"}, "--delays-ms"),
                                         ({"rates_mbit": "fast 0"}, "--rates-mbit"), ({"loss": "a lot"}, "--loss"),
                                         ({"loss": "5%", "netns": "never"}, "--netns never"),
                                         ({"regime": "paper", "netns": "never"}, "--netns never")])
def test_bad_conditions_are_refused_naming_the_flag(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        Links.parse(2, **kwargs)


@pytest.mark.parametrize("flags,expected", [
    ({}, False), ({"loss": "1%"}, True), ({"delays_ms": "0 0 0 5"}, True), ({"netns": "always"}, True),
    ({"regime": "paper"}, True), ({"servers": "ws://10.0.0.2:8777", "loss": "5%"}, False)])
def test_one_decision_of_whether_the_servers_run_in_namespaces(flags, expected):
    assert Links.from_args(LaunchArgs(**flags)).in_namespaces() is expected


def test_the_link_label_names_every_condition_but_loss_and_only_when_set():
    nets = [{"loss_pct": 5, "delay_ms": 0}, {"loss_pct": 5, "delay_ms": 50, "rate_mbit": 10}]
    assert link_label(nets) == "delay 0 50 ms; rate 0 10 Mbit/s"
    assert link_label([{"loss_pct": 20}, {}]) == ""
