"""FedBuff (Nguyen et al. 2022; ``--aggregation fedbuff``): buffer K deltas (new - snapshot), then
global += server_lr * mean(buffer)."""

from dataclasses import dataclass

from asyncfl.core.rules.base import Rule


@dataclass
class FedBuffOptions:
    buffer_size: int = 4  # fedbuff: K, results buffered before one update of the global model
    server_lr: float = 1.0  # fedbuff: the server learning rate applied to the buffer's mean delta


class FedBuffRule(Rule):
    name = "fedbuff"
    Options = FedBuffOptions

    def __init__(self, n_servers, options=None):
        super().__init__(n_servers, options)
        if self.options.buffer_size < 1 or self.options.server_lr <= 0:
            raise ValueError("--buffer-size must be at least 1 and --server-lr positive")
        self.buffer = self.ops.WeightedSum()  # the deltas buffered so far, each of weight 1

    def prepare(self, snapshot, new, n_samples):
        return self.ops.delta(snapshot, new)

    def combine(self, global_weights, prepared, updates_behind):
        self.buffer.add(prepared, 1.0)
        if self.buffer.count < self.options.buffer_size:
            return None
        step = self.ops.scale(self.buffer.mean(), self.options.server_lr)
        self.buffer = self.ops.WeightedSum()
        return self.ops.add(global_weights, step)

    @classmethod
    def label(cls, record):
        return f"fedbuff(K={record['buffer_size']},lr={record['server_lr']:g})"
