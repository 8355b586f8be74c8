"""A data owner in the model owner's own process, with the remote handle's interface (no sockets).

``LocalServer`` trains a ``task.ShardTrainer`` when asked to ``fit``, as ``remote.RemoteServer``
has a data server do it, so the round loop (client/rounds.py), every aggregation rule, the SSP gate, leaving a
silent server out and taking it back, and the evaluation feed can be driven in-process in milliseconds.
``before_fit`` is called at the start of every fit (with the round about to be trained): a test blocks
there to hold a server back, or raises ``ConnectionLost`` to lose a round.
"""

from __future__ import annotations

import threading
from typing import Callable

import torch

from asyncfl.core.model import architecture_signature, flatten
from asyncfl.core.protocol import FitResult, TrainConfig
from asyncfl.core.task import ShardTrainer
from asyncfl.net import wire


class LocalServer:
    def __init__(self, shard: ShardTrainer, before_fit: Callable[[int], None] | None = None):
        self.shard = shard
        self.name = shard.name
        self.uri = f"local://{shard.name}"
        self.weights_via = "in process"
        self.round_tcp = None  # no socket
        self.before_fit = before_fit or (lambda fit_number: None)
        self.fits_started = 0
        self.reconnects = 0
        self._lock = threading.Lock()

    def connect(self, timeout_s: float = 0.0) -> dict:
        return {"type": "hello_ok", "protocol": wire.PROTOCOL_VERSION, "server": self.name,
                "dataset_key": self.shard.dataset_key, "n_samples": int(len(self.shard.labels)),
                "architecture": architecture_signature(), "pace_s": self.shard.pace_s, "network": {}}

    def fit(self, dataset_key: str, train_config: TrainConfig, weights: dict[str, torch.Tensor],
            timeout_s: float | None = None) -> FitResult:
        with self._lock:
            self.fits_started += 1
            number = self.fits_started
        self.before_fit(number)
        result = self.shard.fit(dataset_key, train_config, flatten(weights))
        return result

    def reconnect(self, stop: threading.Event, open_timeout_s: float, first_delay_s: float = 0.0,
                  max_delay_s: float = 0.0) -> bool:
        self.reconnects += 1
        return not stop.is_set()

    def reconnect_at_once(self, stop: threading.Event, open_timeout_s: float) -> bool:
        self.reconnects += 1
        return not stop.is_set()

    def interrupt(self) -> None:
        pass

    def close(self) -> None:
        pass
