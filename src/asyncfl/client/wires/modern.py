"""Today's wire (``--wire modern``, net/wire.py): a round is one binary request and its reply, the
weights in the frames or, on loopback without emulated conditions, in a shared memory segment of the
connection (net/shm.py); a new connection asks ``hello`` and offers the segment."""
from __future__ import annotations

import logging
from urllib.parse import urlsplit

import torch

from asyncfl.client import wires
from asyncfl.client.errors import BadReply, ConnectionLost, RemoteError
from asyncfl.core.conditions import LinkConditions
from asyncfl.core.model import check_weights, copy_into
from asyncfl.core.protocol import FitResult, TrainConfig, fit_stats
from asyncfl.net import auth, shm, wire

log = logging.getLogger("asyncfl.client")


class ModernWire(wires.Wire):
    name = "modern"
    shared_memory = True

    def __init__(self, dataset: str):
        super().__init__(dataset)
        self._fit_requests: dict[tuple, tuple[dict, list | None]] = {}  # (type, dataset, config) -> header, frame

    def open(self, remote, timeout_s: float) -> dict:
        info = remote.hello(timeout_s)
        remote.segment = self.attach(remote, timeout_s)
        return info

    def attach(self, remote, timeout_s: float) -> shm.Segment | None:
        """Offer the server a shared memory segment if it can be on this machine and its link is not
        emulated; None if not offered or refused (the weights then travel in the frames)."""
        link = LinkConditions.from_hello(remote.info.get("network"))
        if not (remote.shared_memory and auth.is_loopback(urlsplit(remote.uri).hostname or "") and link.is_clean()
                and shm.available()):
            return None
        try:
            segment, offer = shm.Segment.create(remote.spec)
        except (OSError, ValueError) as e:
            log.info("%s: no shared memory (%s); weights go in the websocket frames", remote.name, e)
            return None
        try:
            remote.request({"type": "attach", **offer}, None, "attach_ok", timeout_s)
        except ConnectionLost:
            raise
        except RemoteError as e:  # refused: another machine, container or user, or a server without shared memory
            log.info("%s: shared memory refused (%s); weights go in the websocket frames", remote.name, e)
            return None
        finally:
            segment.close_fd()  # mapped by the server or refused: the descriptor is no longer needed
        return segment

    def fit(self, remote, dataset_key: str, train_config: TrainConfig, weights: dict[str, torch.Tensor],
            timeout_s: float | None) -> FitResult:
        segment = remote.segment
        key = ("fit_shared" if segment is not None else "fit", dataset_key, train_config)
        if key not in self._fit_requests:  # a run sends the same request header every round: built once
            request = {"type": key[0], "dataset_key": dataset_key, "train_config": train_config.to_dict()}
            self._fit_requests[key] = request, wire.encode_parts(request) if segment is not None else None
        request, frame = self._fit_requests[key]
        if segment is not None:
            copy_into(segment.request, weights)
        header, new_weights = remote.request(request, None if segment else weights, "fit_ok", timeout_s, frame)
        if segment is not None and new_weights is None:
            # The reply region: valid, like a frame's views, until this connection's next request.
            new_weights = segment.reply
        try:
            check_weights(new_weights, remote.spec)
            loss, n_samples, compute_s, idle_s = fit_stats(header)
        except (KeyError, ValueError) as e:
            raise BadReply(f"fit reply rejected: {e}") from None
        return FitResult(new_weights, loss, n_samples, compute_s, idle_s)
