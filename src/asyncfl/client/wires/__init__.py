"""The client's side of each wire, one module each, behind one small interface: what a new connection
says first (``open``) and what one round sends and receives (``fit``). ``RemoteServer`` (client/remote.py)
keeps the connection: it opens it, times each exchange and reads TCP_INFO; a wire only uses
``remote.exchange`` / ``remote.request``. The server's side of each is server/wires/.

Adding a wire: its module here with a ``Wire`` subclass registered in ``WIRES``, its server side, a test.
"""
from __future__ import annotations

from typing import Protocol

import torch

from asyncfl.core.protocol import FitResult, TrainConfig


class Remote(Protocol):
    """What a wire may use of its connection (client/remote.py's RemoteServer)."""

    name: str
    uri: str
    info: dict  # the server's hello, once asked
    spec: dict  # the run's model: names, shapes, dtypes (core/model.weight_spec)
    shared_memory: bool  # may this connection use a shared memory segment
    segment: object  # the connection's segment (net/shm.Segment), if the wire attached one

    def hello(self, timeout_s: float) -> dict: ...

    def request(self, header: dict, weights, expect: str, timeout_s: float | None, frame: list | None = None): ...

    def exchange(self, message, what: str, timeout_s: float | None): ...

    def last_waits(self) -> tuple[float, float]: ...

    def tcp_mark(self): ...

    def tcp_since(self, before, first_byte_s: float, longest_gap_s: float) -> None: ...


class Wire:
    """One connection's wire (made per RemoteServer: it may keep per-connection state)."""

    name = ""
    shared_memory = False  # may the weights travel through a shared memory segment on loopback

    def __init__(self, dataset: str):
        self.dataset = dataset

    def open(self, remote: Remote, timeout_s: float) -> dict:
        """What a fresh connection says before its first round; the server's hello info."""
        raise NotImplementedError

    def fit(self, remote: Remote, dataset_key: str, train_config: TrainConfig,
            weights: dict[str, torch.Tensor], timeout_s: float | None) -> FitResult:
        raise NotImplementedError


def names() -> list[str]:
    return list(WIRES)


def make(name: str, dataset: str) -> Wire:
    if name not in WIRES:
        raise ValueError(f"wire must be one of {', '.join(repr(n) for n in WIRES)}, not {name!r}")
    return WIRES[name](dataset)


from asyncfl.client.wires import modern, original  # noqa: E402  (they subclass Wire)

WIRES: dict[str, type[Wire]] = {w.name: w for w in (modern.ModernWire, original.OriginalWire)}
