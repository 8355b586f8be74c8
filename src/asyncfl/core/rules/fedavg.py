"""Strictly synchronous FedAvg (``--aggregation fedavg``): results of a round are held until every server
has sent its own, then averaged weighted by samples and applied once. Its gate runs at S=0, so every
server of a round trains from the same global model."""

from asyncfl.core.rules.base import Rule


class FedAvgRule(Rule):
    name = "fedavg"
    has_threshold = False

    def __init__(self, n_servers, options=None):
        super().__init__(n_servers, options)
        self.pending = self.ops.WeightedSum()  # this round's results so far, weighted by samples

    @classmethod
    def refuse(cls, args):
        if getattr(args, "server_timeout_s", 0):
            return "--aggregation fedavg waits for every server each round: --server-timeout-s does not apply"
        return None

    def prepare(self, snapshot, new, n_samples):
        return self.ops.delta(snapshot, new), n_samples

    def combine(self, global_weights, prepared, updates_behind):
        self.pending.add(*prepared)
        if self.pending.count < self.n_servers:
            return None
        step, self.pending = self.pending.mean(), self.ops.WeightedSum()
        return self.ops.add(global_weights, step)
