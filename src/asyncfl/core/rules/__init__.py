"""Aggregation rules: how a server's result changes the global model (``--aggregation``).

One module per rule in this folder, each a ``Rule`` subclass (base.py), found here by name: adding a rule
is adding its module, a test and its section of docs/rules.md; the client's flags, the sweep and the
analysis's labels all read ``REGISTRY``. ssp.py is the study's rule; fedavg.py, fedasync.py and
fedbuff.py are there to compare it with.
"""

import importlib
import pkgutil
from typing import Literal

from asyncfl.core.rules.base import REGISTRY, NoOptions, Rule, StateDict

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base", "arithmetic"):
        importlib.import_module(f"{__name__}.{_module.name}")

DEFAULT = "ssp"
NAMES = (DEFAULT, *sorted(set(REGISTRY) - {DEFAULT}))
Name = Literal[NAMES]  # type: ignore[valid-type]  # the CLI's choices


def get(name: str) -> type[Rule]:
    if name not in REGISTRY:
        raise ValueError(f"unknown aggregation rule {name!r}; choose one of {', '.join(NAMES)}")
    return REGISTRY[name]


def threshold(name: str, requested: int) -> int:
    """The S the gate uses under rule ``name``: the one asked for, or 0 for a rule with its own barrier."""
    return requested if get(name).has_threshold else 0


def option_classes() -> tuple[type, ...]:
    """Every rule's options dataclass (once each): the client's arguments inherit their fields."""
    return tuple(dict.fromkeys(REGISTRY[n].Options for n in NAMES if REGISTRY[n].Options is not NoOptions))


def build(args, n_servers: int) -> Rule:
    """The rule ``args.aggregation`` names, with its options read from ``args`` and the gate's S from
    ``args.staleness_threshold`` (``rule.staleness``); ValueError if refused."""
    cls = get(args.aggregation)
    if why := cls.refuse(args):
        raise ValueError(why)
    rule = cls(n_servers, cls.options_from(args))
    rule.staleness = rule.staleness_threshold(args.staleness_threshold)
    return rule


def label(record: dict) -> str:
    """The analysis's name of a config.json ``aggregation`` record (absent: the study's rule)."""
    return get(record.get("aggregation", DEFAULT)).label(record)


__all__ = ["REGISTRY", "Rule", "StateDict", "NoOptions", "NAMES", "Name", "get", "build", "label", "option_classes", "threshold"]
