"""Per-server link conditions: the flags that set them, parsed once into ``Links``, which the launcher,
the data owners' entry point and the analysis share (netem/lab.py applies each condition to a link).

A new per-link condition is: a field of ``LinkConditions`` (its value per direction, with its unit as a
suffix), its per-server flag in ``LinkSettings`` and its entry in ``CONDITIONS``; then the netem code that
applies it and a test. Hello replies report each server's conditions, so the client and the analysis
read the new one without change.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

from asyncfl.core.naming import flag as _flag
from asyncfl.core.regime import resolve as resolve_regime


@dataclass(frozen=True)
class LinkConditions:
    loss_pct: float = 0.0  # random packet loss, each direction, in percent
    delay_ms: float = 0.0  # added one-way delay, each direction, in milliseconds
    rate_mbit: float = 0.0  # bandwidth cap, each direction, in Mbit/s (0 = unlimited)

    def is_clean(self) -> bool:
        return all(getattr(self, f.name) == 0 for f in fields(self))

    @classmethod
    def from_hello(cls, network) -> LinkConditions:
        """The conditions a hello's ``network`` field reports (absent fields: none)."""
        network = network if isinstance(network, dict) else {}
        return cls(**{f.name: network.get(f.name, 0) for f in fields(cls)})


@dataclass(frozen=True)
class Condition:
    flag: str  # the LinkSettings field holding its per-server list
    label: str  # its name in the analysis's link column ('' = a column of its own: loss)
    unit: str


CONDITIONS = {  # LinkConditions field -> how it is given and shown
    "loss_pct": Condition("losses", "", "%"),
    "delay_ms": Condition("delays_ms", "delay", "ms"),
    "rate_mbit": Condition("rates_mbit", "rate", "Mbit/s"),
}


@dataclass
class LinkSettings:
    """The data owners' link flags (ServerArgs inherits them)."""

    loss: str = "0%"  # network loss L on every server's link, e.g. "10%" (the paper's L), in percent per direction
    losses: str = ""  # per-server loss in percent, e.g. "0 0 10 20" (instead of --loss)
    delays_ms: str = ""  # per-server added one-way delay in milliseconds, e.g. "0 0 50 200" (needs netem)
    rates_mbit: str = ""  # per-server bandwidth cap in Mbit/s, e.g. "0 0 100 10" (0 = unlimited)
    netns: Literal["auto", "always", "never"] = "auto"  # run each server in its own network namespace: auto = when any condition is set (needs root or user namespaces)


def _numbers(text: str, what: str, n: int) -> list[float] | None:
    parts = text.replace(",", " ").replace("%", " ").split()
    if not parts:
        return None
    if len(parts) != n:
        raise ValueError(f"{what} has {len(parts)} values for {n} servers")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"{what} must be numbers, got {text!r}") from None
    if any(v < 0 or v != v for v in values):
        raise ValueError(f"{what} must not be negative")
    return values


@dataclass(frozen=True)
class Links:
    """One run's links: a LinkConditions per server, and where its servers run."""

    per_server: tuple[LinkConditions, ...]
    netns: str = "auto"  # LinkSettings.netns
    regime: str = "fast"  # the paper regime puts every server in a namespace (one transport at every L)
    remote: bool = False  # servers given by address (--servers): nothing of theirs is started here

    @classmethod
    def parse(cls, n_servers: int, loss: str = "", netns: str = "auto", regime: str = "fast", remote: bool = False,
              **lists: str) -> Links:
        """From the flags' forms: ``loss`` ("10%") for every link, or per-server lists ("0 0 10 20") keyed by
        their LinkSettings names. A non-zero ``loss`` with ``losses`` is refused as ambiguous; ValueError
        names the flag."""
        try:
            every = _numbers(loss, "--loss", 1) if loss.strip() else None
        except ValueError:
            raise ValueError(f"--loss takes a percentage such as 10% (got {loss!r})") from None
        values = {}
        for name, cond in CONDITIONS.items():
            values[name] = _numbers(lists.get(cond.flag, ""), _flag(cond.flag), n_servers)
        if every and every[0] > 0 and values["loss_pct"] is not None:
            raise ValueError("give either --loss (every link) or --losses (per server), not both")
        values["loss_pct"] = values["loss_pct"] or [every[0] if every else 0.0] * n_servers
        if any(v >= 100 for v in values["loss_pct"]):
            raise ValueError("a loss must be below 100%")
        per = tuple(LinkConditions(**{k: (v or [0.0] * n_servers)[i] for k, v in values.items()}) for i in range(n_servers))
        links = cls(per, netns, regime, remote)
        if netns == "never" and resolve_regime(regime).paced:
            raise ValueError("--regime paper puts every server in a namespace (one transport at every L); drop --netns never")
        if netns == "never" and not links.clean():
            raise ValueError("network conditions need namespaces; drop --netns never")
        return links

    @classmethod
    def from_args(cls, args) -> Links:
        """The links of a ServerArgs or LaunchArgs."""
        return cls.parse(args.n_servers, args.loss, args.netns, getattr(args, "regime", "fast"),
                         bool(getattr(args, "servers", "")), **{c.flag: getattr(args, c.flag) for c in CONDITIONS.values()})

    def clean(self) -> bool:
        return all(c.is_clean() for c in self.per_server)

    def in_namespaces(self) -> bool:
        """Do the servers started here run in network namespaces (which need root, or netem/rootless.py)?"""
        if self.remote or self.netns == "never":
            return False
        return resolve_regime(self.regime).paced or self.netns == "always" or not self.clean()


def link_label(networks: list[dict]) -> str:
    """The links' conditions other than loss per server, from hello ``network`` records ('delay 0 0 50 200
    ms; rate 0 0 100 10 Mbit/s'), '' when none has any: runs that differ in them are other
    configurations even at the same loss."""
    parts = [f"{c.label} {' '.join(f'{n.get(key, 0):g}' for n in networks)} {c.unit}"
             for key, c in CONDITIONS.items() if c.label and any(n.get(key, 0) for n in networks)]
    return "; ".join(parts)
