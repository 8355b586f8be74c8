"""What a request to a data owner can end in, for the handle (client/remote.py), its wires
(client/wires/) and the round loop."""
from __future__ import annotations


class RemoteError(RuntimeError):
    """The server refused a request or broke the protocol: retrying would not help."""


class ConnectionLost(RemoteError):
    """The connection failed or a reply did not come in time: a new connection may well work.
    ``silence_s``: the inactivity that ended it, for a timeout (else None); ``round_s``: how long the
    request had been out."""

    def __init__(self, message: str, silence_s: float | None = None, round_s: float | None = None,
                 in_handshake: bool = False):
        super().__init__(message)
        self.silence_s, self.round_s = silence_s, round_s
        self.in_handshake = in_handshake  # timed out after the TCP connect, waiting for the handshake's answer


class BadReply(ConnectionLost):
    """A reply that breaks the protocol (malformed, wrong tensors, non-finite values): it is dropped, never
    applied, and the round retried on a new connection."""
