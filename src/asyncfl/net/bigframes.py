"""Large binary WebSocket frames without copying their payload. A model is 1.7 MB, and the ``websockets``
library's own buffers copy a payload three or four times on each side (docs/performance.md).

Receiving: ``PayloadReader`` is the library's stream buffer, except that when the library's frame parser
asks for ``BIG_BYTES`` or more at once (a payload: headers and control frames are smaller), it makes a
buffer of exactly that size and the socket receives straight into it (``sink``). The library still parses
every header, checks ``max_size`` before the buffer exists, unmasks and validates the frame. Only a
connection's reader does so (``armed`` by transport.Connection): for a peer still in its handshake, whose
token has not been checked, bytes are buffered as they arrive, as the library does.
``receive`` reads a socket into a protocol either way. Sending: ``send_binary`` writes one frame header
and hands the kernel the caller's buffers after it.
"""

from __future__ import annotations

import secrets
import socket
import ssl
import struct

from websockets.frames import Opcode, apply_mask
from websockets.streams import StreamReader

BIG_BYTES = 64 * 1024


class PayloadReader(StreamReader):
    def __init__(self) -> None:
        super().__init__()
        self.sink: memoryview | None = None  # what is still missing of the payload being read
        self.armed = False  # set by transport.Connection: no buffer is made for a peer still in its handshake

    def read_exact(self, n: int):
        if not self.armed or n < BIG_BYTES or len(self.buffer) >= n:
            return (yield from super().read_exact(n))
        out = bytearray(n)
        have = len(self.buffer)
        out[:have] = self.buffer
        del self.buffer[:]
        self.sink = memoryview(out)[have:]
        while self.sink:
            if self.eof:
                raise EOFError(f"stream ends {len(self.sink)} bytes short of a {n}-byte payload")
            yield
        self.sink = None
        return out

    def feed_data(self, data: bytes | bytearray) -> None:
        if self.sink and data:  # bytes read the usual way while a payload is open go into it first
            k = min(len(data), len(self.sink))
            self.sink[:k] = memoryview(data)[:k]
            self.sink, data = self.sink[k:], data[k:]
        super().feed_data(data)

    def received(self, n: int) -> None:
        self.sink = self.sink[n:]


def receive(sock: socket.socket, protocol, read_bytes: int) -> int:
    """Read once from ``sock`` into ``protocol`` (into the open payload's buffer, if any, else up to
    ``read_bytes``); the number of bytes read, 0 at the end of the stream (fed to the protocol as such)."""
    reader = protocol.reader
    if reader.sink:
        n = sock.recv_into(reader.sink)
        reader.received(n)
        data = b""
    else:
        data = sock.recv(read_bytes)
        n = len(data)
    if n:
        protocol.receive_data(data)  # b"": the parser resumes on what recv_into wrote
    else:
        protocol.receive_eof()
    return n


def install(protocol):
    """Give a protocol that has not received a byte a PayloadReader (its parser restarted on it)."""
    protocol.reader = PayloadReader()
    protocol.parser = protocol.parse()
    next(protocol.parser)
    return protocol


def send_all(sock: socket.socket, data) -> None:
    """All of ``data``, each ``send`` under the socket's timeout on its own, so a timeout means that long
    without the kernel taking a byte: what websocket-client 0.57's ``send_frame`` loop did (``_send`` per
    call), the original's client. ``sendall``'s timeout bounds the whole write instead (Python >= 3.5), which
    cuts a slow upload of a model over a lossy link that is still moving."""
    view = memoryview(data).cast("B")
    while view:
        view = view[sock.send(view):]


def send_binary(sock: socket.socket, parts: list, mask: bool) -> None:
    """One binary frame of ``parts``' bytes: only the header is written here; a client (``mask``) masks the
    payload with the library's C routine (one copy, RFC 6455 5.3); raises OSError."""
    views = [memoryview(m).cast("B") for m in parts]
    n = sum(len(v) for v in views)
    head = struct.pack("!BBQ", 0x80 | Opcode.BINARY, (0x80 if mask else 0) | 127, n)  # 64-bit length: always valid
    if mask:
        key = secrets.token_bytes(4)
        head, views = head + key, [memoryview(apply_mask(b"".join(views), key))]
    if isinstance(sock, ssl.SSLSocket):  # no sendmsg over TLS
        send_all(sock, b"".join([head, *views]))
        return
    views = [memoryview(head), *views]
    while views:
        sent = sock.sendmsg(views)
        while views and sent >= len(views[0]):
            sent -= len(views.pop(0))
        if views and sent:
            views[0] = views[0][sent:]
