"""What the model owner and the data owners agree on: requests, replies and their validation.

Both sides import this module and nothing of each other. A request is a JSON header (one of
``REQUEST_KEYS``' types, with exactly its keys) plus, for ``fit``, the model's weights (see net/wire.py for
the bytes); a ``fit_ok`` reply carries the trained weights and ``fit_stats``. ``TrainConfig`` is what a
round asks for (PySyft 0.2's ``sy.TrainConfig``); a hello reports the data owner's link conditions
(core/conditions.py), so the client knows whether shared memory is allowed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the weights are tensors; the protocol itself needs no PyTorch
    import torch


@dataclass(frozen=True)
class TrainConfig:
    """What the model owner asks for in one round (PySyft 0.2's ``sy.TrainConfig``)."""

    batch_size: int = 32  # samples per batch
    max_nr_batches: int = 1  # batches per round
    lr: float = 0.1  # SGD learning rate
    shuffle: bool = True  # draw batches from a fresh permutation of the shard every epoch
    optimizer: str = "SGD"  # the only optimizer the study used (PySyft 0.2 had no working momentum)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        if not isinstance(d, dict) or set(d) - set(cls.__dataclass_fields__):
            raise ValueError(f"train_config must be an object with keys from {sorted(cls.__dataclass_fields__)}")
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if not (_is_int(self.batch_size) and 1 <= self.batch_size <= 65536):
            raise ValueError("batch_size must be an integer in [1, 65536]")
        if not (_is_int(self.max_nr_batches) and 1 <= self.max_nr_batches <= 100000):
            raise ValueError("max_nr_batches must be an integer in [1, 100000]")
        if not (isinstance(self.lr, (int, float)) and not isinstance(self.lr, bool) and math.isfinite(self.lr)
                and 0 < self.lr <= 100):
            raise ValueError("lr must be a number in (0, 100]")
        if not isinstance(self.shuffle, bool):
            raise ValueError("shuffle must be true or false")
        if self.optimizer != "SGD":
            raise ValueError("optimizer must be 'SGD'")

    def to_dict(self) -> dict:
        return asdict(self)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)  # JSON true is not a batch size


@dataclass
class FitResult:
    weights: dict[str, torch.Tensor]  # from a remote fit: views valid until that connection's next request
    loss: float  # mean training loss over the round's batches (NaN if the shard is empty)
    n_samples: int  # samples used this round
    compute_s: float  # seconds of training, excluding the speed-ratio idle time
    idle_s: float = 0.0  # seconds spent idling to emulate a slower server


REQUEST_KEYS = {"hello": {"type"}, "fit": {"type", "dataset_key", "train_config"},
                "attach": {"type", "pid", "fd", "nonce"}, "fit_shared": {"type", "dataset_key", "train_config"}}


def fit_stats(header: dict) -> tuple[float, int, float, float]:
    """A ``fit_ok`` reply's (loss, n_samples, compute_s, idle_s), checked to be plausible numbers; raises
    KeyError or ValueError otherwise (the client then drops the reply)."""
    stats = {k: header[k] for k in ("loss", "n_samples", "compute_s", "idle_s")}
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in stats.values()):
        raise ValueError("loss, n_samples, compute_s and idle_s must be numbers")
    if not (isinstance(stats["n_samples"], int) and 0 <= stats["n_samples"] <= 10**8
            and 0 <= stats["compute_s"] < 1e6 and 0 <= stats["idle_s"] < 1e7):
        raise ValueError(f"implausible round statistics {stats}")
    try:
        loss = float(stats["loss"])
    except OverflowError:  # an integer beyond a float: the reply is refused like any implausible one
        raise ValueError("the loss is beyond a float's range") from None
    return loss, stats["n_samples"], float(stats["compute_s"]), float(stats["idle_s"])
