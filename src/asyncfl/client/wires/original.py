"""The original's wire (``--wire original``, net/pysyft.py): a round is PySyft 0.2.3's seven exchanges of
hex text, each under its own timeout; a reconnection sends nothing before the round's first message
(the original had no hello), so only the first connection asks ``hello``. ``exchange_chars`` holds the
last round's (sent, received) characters per exchange."""
from __future__ import annotations

import torch

from asyncfl.client import wires
from asyncfl.client.errors import BadReply, RemoteError
from asyncfl.core.model import check_weights
from asyncfl.core.protocol import FitResult, TrainConfig, fit_stats
from asyncfl.net import pysyft


class OriginalWire(wires.Wire):
    name = "original"

    def __init__(self, dataset: str):
        super().__init__(dataset)
        self.exchange_chars: list[tuple[int, int]] = []
        pysyft.torchscript_archive(dataset)  # made once (about a second), before the first round
        pysyft.loss_fn_archive()

    def open(self, remote, timeout_s: float) -> dict:
        return remote.info or remote.hello(timeout_s)

    def fit(self, remote, dataset_key: str, train_config: TrainConfig, weights: dict[str, torch.Tensor],
            timeout_s: float | None) -> FitResult:
        requests, model_id = pysyft.round_messages(weights, self.dataset, dataset_key, train_config)
        tcp_mark = remote.tcp_mark()
        replies, chars, longest_gap_s, fit_first_byte_s = [], [], 0.0, 0.0
        for step, request in zip(pysyft.ROUND, requests):
            text = pysyft.to_text(request)
            reply = remote.exchange(text, step.name, timeout_s)
            chars.append((len(text), len(reply)))
            wait_s, gap_s = remote.last_waits()
            if step.name == "fit":
                fit_first_byte_s = wait_s  # includes the server's work, which the stall leaves out
            else:
                longest_gap_s = max(longest_gap_s, wait_s)
            longest_gap_s = max(longest_gap_s, gap_s)
            try:
                replies.append(pysyft.check_reply(pysyft.from_text(reply), step.reply))
            except pysyft.SyftWireError as e:
                raise BadReply(f"{step.name}: malformed reply: {e}") from None
            except pysyft.RemoteRefusal as e:
                raise RemoteError(f"server refused {step.name}: {e}") from None
        self.exchange_chars = chars
        remote.tcp_since(tcp_mark, fit_first_byte_s, longest_gap_s)
        try:
            loss, stats = pysyft.read_loss(replies[4])
            wrapper_id, payload = replies[5][1]
            if wrapper_id != model_id:
                raise ValueError(f"the model came back under id {wrapper_id}, not {model_id}")
            new_weights = pysyft.weights_of(payload)
            check_weights(new_weights, remote.spec)
            _, n_samples, compute_s, idle_s = fit_stats({**stats, "loss": loss})
        except (KeyError, ValueError, TypeError) as e:  # SyftWireError is a ValueError
            raise BadReply(f"fit reply rejected: {e}") from None
        return FitResult(new_weights, loss, n_samples, compute_s, idle_s)
