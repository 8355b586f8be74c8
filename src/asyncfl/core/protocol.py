"""What the model owner and the data owners agree on: requests, replies and their validation.

Both sides import this module and nothing of each other. A request is a JSON header (one of
``REQUEST_KEYS``' types, with exactly its keys) plus, for ``fit``, the model's weights (see net/wire.py for
the bytes); a ``fit_ok`` reply carries the trained weights and ``fit_stats``. ``TrainConfig`` is what a
round asks for (PySyft 0.2's ``sy.TrainConfig``), ``LinkConditions`` how a data owner's link is emulated
(hello reports it, so the client knows whether shared memory is allowed).
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


@dataclass(frozen=True)
class LinkConditions:
    loss_pct: float = 0.0  # random packet loss, each direction, in percent
    delay_ms: float = 0.0  # added one-way delay, each direction, in milliseconds
    rate_mbit: float = 0.0  # bandwidth cap, each direction, in Mbit/s (0 = unlimited)

    def is_clean(self) -> bool:
        return self.loss_pct == 0 and self.delay_ms == 0 and self.rate_mbit == 0

    @classmethod
    def from_hello(cls, network) -> "LinkConditions":
        """The conditions a hello's ``network`` field reports (absent fields: none)."""
        network = network if isinstance(network, dict) else {}
        return cls(**{name: network.get(name, 0) for name in cls.__dataclass_fields__})


def fit_stats(header: dict) -> tuple[float, int, float, float]:
    """A ``fit_ok`` reply's (loss, n_samples, compute_s, idle_s), checked to be plausible numbers; raises
    KeyError or ValueError otherwise (the client then drops the reply)."""
    stats = {k: header[k] for k in ("loss", "n_samples", "compute_s", "idle_s")}
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in stats.values()):
        raise ValueError("loss, n_samples, compute_s and idle_s must be numbers")
    if not (isinstance(stats["n_samples"], int) and 0 <= stats["n_samples"] <= 10**8
            and 0 <= stats["compute_s"] < 1e6 and 0 <= stats["idle_s"] < 1e7):
        raise ValueError(f"implausible round statistics {stats}")
    return float(stats["loss"]), stats["n_samples"], float(stats["compute_s"]), float(stats["idle_s"])


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


def parse_conditions(n_servers: int, loss: str = "", losses: str = "", delays_ms: str = "",
                     rates_mbit: str = "") -> list[LinkConditions]:
    """Per-server conditions from the command-line forms: ``loss`` ("10%") for every link, or per-server
    lists ("0 0 10 20"). Giving a non-zero ``loss`` and ``losses`` together is refused as ambiguous."""
    try:
        every = _numbers(loss, "--loss", 1) if loss.strip() else None
    except ValueError:
        raise ValueError(f"--loss takes a percentage such as 10% (got {loss!r})") from None
    per = _numbers(losses, "--losses", n_servers)
    if every and every[0] > 0 and per is not None:
        raise ValueError("give either --loss (every link) or --losses (per server), not both")
    loss_list = per or [every[0] if every else 0.0] * n_servers
    if any(v >= 100 for v in loss_list):
        raise ValueError("a loss must be below 100%")
    delay_list = _numbers(delays_ms, "--delays-ms", n_servers) or [0.0] * n_servers
    rate_list = _numbers(rates_mbit, "--rates-mbit", n_servers) or [0.0] * n_servers
    return [LinkConditions(loss, d, r) for loss, d, r in zip(loss_list, delay_list, rate_list)]
