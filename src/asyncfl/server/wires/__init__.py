"""The data owner's side of each wire, one module each, behind one small interface: ``accepts`` says
whether a received message is this wire's (text frames are the original's, binary ones today's), and
``session`` gives one connection's answerer, ``answer(message) -> (reply, refusal or None)``, which never
raises. An owner answers every wire on every connection (server/owner.py); the client's side is
client/wires/. What ``--faults original`` does to a connection (one queue for all of them) is
server/pysyft.py's ``shared_queue_session``, whichever wire the messages are in.

Adding a wire: its module here with a ``ServerWire`` subclass in ``WIRES``, its client side, a test.
"""
from __future__ import annotations

from collections.abc import Callable

from asyncfl.core.task import ShardTrainer

Answer = Callable[[object], tuple[object, "str | None"]]


class ServerWire:
    """Made once per owner process (it may hold what all of its connections share)."""

    name = ""

    def __init__(self, trainer: ShardTrainer):
        self.trainer = trainer

    def accepts(self, message) -> bool:
        raise NotImplementedError

    def session(self, info: dict) -> Answer:
        """One connection's answerer; ``info`` is what its hello reports (shard, network, TCP)."""
        raise NotImplementedError


def answerer(wires: list[ServerWire], info: dict) -> Answer:
    """One connection's answer to a message of any of ``wires`` (the last takes what none accepts)."""
    sessions = [(w.accepts, w.session(info)) for w in wires]
    first_accepts, first = sessions[0]
    rest = sessions[1:]

    def answer(message):
        if first_accepts(message):  # the common case first: one test per request
            return first(message)
        for accepts, session in rest:
            if accepts(message):
                return session(message)
        return sessions[-1][1](message)

    return answer


def for_owner(trainer: ShardTrainer) -> list[ServerWire]:
    return [cls(trainer) for cls in WIRES.values()]


from asyncfl.server.wires import modern, original  # noqa: E402  (they subclass ServerWire)

WIRES: dict[str, type[ServerWire]] = {w.name: w for w in (modern.ModernWire, original.OriginalWire)}
