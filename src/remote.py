"""The model owner's handle on one data server (PySyft 0.2's ``WebsocketClientWorker``).

``connect`` retries until the server answers (or a deadline passes) and asks it ``hello``;
``fit(dataset_key=..., train_config=..., weights=...)`` runs one remote round and returns a ``FitResult``.
"""

from __future__ import annotations

import time

import torch
from websockets.exceptions import WebSocketException
from websockets.sync.client import ClientConnection, connect

from src import wire
from src.worker import FitResult, TrainConfig


class RemoteError(RuntimeError):
    """The server refused a request, broke the protocol, or could not be reached."""


class WebsocketClientWorker:
    def __init__(self, uri: str, name: str):
        self.uri, self.name = uri, name
        self.info: dict = {}
        self._ws: ClientConnection | None = None

    def connect(self, timeout_s: float = 30.0) -> dict:
        """Open the connection (retrying while the server is not up yet) and return its hello info."""
        deadline = time.monotonic() + timeout_s
        delay = 0.05
        while True:
            try:
                self._ws = connect(self.uri, compression=None, max_size=wire.MAX_FRAME_BYTES,
                                   open_timeout=max(1.0, deadline - time.monotonic()), legacy=True)
                break
            except (OSError, WebSocketException, TimeoutError) as e:
                if time.monotonic() + delay > deadline:
                    raise RemoteError(f"{self.name}: cannot connect to {self.uri}: {e}") from None
                time.sleep(delay)  # back off between attempts to a server that is still starting
                delay = min(delay * 2, 1.0)
        header, _ = self._request({"type": "hello"}, None, "hello_ok")
        if header.get("protocol") != wire.PROTOCOL_VERSION:
            raise RemoteError(f"{self.name}: protocol {header.get('protocol')} at {self.uri}, "
                              f"this client speaks {wire.PROTOCOL_VERSION}")
        self.info = header
        return header

    def fit(self, dataset_key: str, train_config: TrainConfig, weights: dict[str, torch.Tensor]) -> FitResult:
        header, new_weights = self._request(
            {"type": "fit", "dataset_key": dataset_key, "train_config": train_config.to_dict()}, weights, "fit_ok")
        if new_weights is None:
            raise RemoteError(f"{self.name}: fit reply without weights")
        return FitResult(new_weights, float(header["loss"]), int(header["n_samples"]),
                         float(header["compute_s"]), float(header.get("idle_s", 0.0)))

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
            self._ws = None

    def _request(self, header: dict, weights, expect: str):
        if self._ws is None:
            raise RemoteError(f"{self.name}: not connected")
        try:
            self._ws.send(wire.encode(header, weights))
            reply = self._ws.recv()
            reply_header, reply_weights = wire.decode(reply)
        except (WebSocketException, OSError, wire.WireError) as e:
            raise RemoteError(f"{self.name}: {header['type']} failed: {e}") from None
        if reply_header["type"] == "error":
            raise RemoteError(f"{self.name}: server refused {header['type']}: {reply_header.get('message')}")
        if reply_header["type"] != expect:
            raise RemoteError(f"{self.name}: expected {expect}, got {reply_header['type']}")
        return reply_header, reply_weights
