"""The study's asynchronous FedAvg (``--aggregation ssp``, the default): each server's update is applied as
soon as it arrives, weighted so that a full set of n updates adds up to an average,

    global += (new - old) / n_servers

where ``old`` is the global model the server was sent (its snapshot) and ``new`` what it sent back."""

from asyncfl.core.rules.base import Rule


class SSPRule(Rule):
    name = "ssp"

    def prepare(self, snapshot, new, n_samples):
        return self.ops.scaled_update(snapshot, new, self.n_servers)

    def combine(self, global_weights, prepared, updates_behind):
        return self.ops.add(global_weights, prepared)
