"""FedAsync (Xie et al. 2019; ``--aggregation fedasync``): global = (1 - a_t) global + a_t new, with
a_t = alpha * s(gap) and gap the global updates since the server's snapshot."""

from dataclasses import dataclass
from typing import Literal

from asyncfl.core.rules.base import Rule

STALENESS_FNS = ("constant", "polynomial", "hinge")


@dataclass
class FedAsyncOptions:
    alpha: float = 0.6  # fedasync: mixing weight alpha in (0, 1]
    staleness_fn: Literal["constant", "polynomial", "hinge"] = "polynomial"  # fedasync: s(gap), gap = global updates since the snapshot
    staleness_a: float = 0.5  # fedasync: a of the polynomial (1+gap)^-a or of the hinge 1/(a(gap-b)+1)
    staleness_b: int = 4  # fedasync: b of the hinge (no discount up to b updates behind)


class FedAsyncRule(Rule):
    name = "fedasync"
    Options = FedAsyncOptions

    def __init__(self, n_servers, options=None):
        super().__init__(n_servers, options)
        o = self.options
        if not 0 < o.alpha <= 1:
            raise ValueError("--alpha must be in (0, 1]")
        if o.staleness_fn not in STALENESS_FNS:
            raise ValueError(f"unknown staleness function {o.staleness_fn!r}")

    def prepare(self, snapshot, new, n_samples):
        return new  # used under the lock right away, before the connection's buffer is reused

    def combine(self, global_weights, prepared, updates_behind):
        o = self.options
        weight = o.alpha * self.ops.staleness_weight(o.staleness_fn, updates_behind, o.staleness_a, o.staleness_b)
        return self.ops.mix(global_weights, prepared, weight)

    @classmethod
    def label(cls, record):
        """'fedasync(alpha=0.6,polynomial,a=0.5)': the hinge adds b; constant has neither."""
        fn = record["staleness_fn"]
        params = {"constant": "", "polynomial": f",a={record['staleness_a']:g}",
                  "hinge": f",a={record['staleness_a']:g},b={record['staleness_b']:g}"}[fn]
        return f"fedasync(alpha={record['alpha']:g},{fn}{params})"
