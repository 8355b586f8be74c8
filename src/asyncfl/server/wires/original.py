"""The original's wire on the owner's side (``--wire original``): PySyft 0.2.3's messages as hex text
frames, answered against one object registry that all of the owner's connections share, as a
``WebsocketServerWorker``'s was (server/pysyft.py holds the registry and its handler)."""
from __future__ import annotations

from asyncfl.core.task import ShardTrainer
from asyncfl.server import pysyft, wires


class OriginalWire(wires.ServerWire):
    name = "original"

    def __init__(self, trainer: ShardTrainer):
        super().__init__(trainer)
        self.store = pysyft.ObjectStore()  # one registry for every connection

    def accepts(self, message) -> bool:
        return isinstance(message, str)

    def session(self, info: dict) -> wires.Answer:
        trainer, store = self.trainer, self.store
        return lambda text: pysyft.handle_text(trainer, store, text)
