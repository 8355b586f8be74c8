"""A WebSocket connection for one request/reply at a time.

The ``websockets`` library's Sans-I/O protocol (``ClientProtocol``, ``ServerProtocol``) parses every
handshake and frame, answers pings and closes, and enforces ``max_size`` before a payload is buffered;
this module only moves bytes between it and a blocking socket (a model's payload without copies:
net/bigframes.py). The thread that waits for a reply reads it itself (no reader thread fighting the training
threads for the GIL, docs/performance.md). The opening handshakes: net/wsclient.py and net/wsserver.py.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections import deque

from websockets.client import ClientProtocol
from websockets.frames import CloseCode, Opcode
from websockets.protocol import Side, State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from asyncfl.net import bigframes, tcp

READ_BYTES = 1 << 16  # one recv of anything but a large payload (which goes straight into its buffer)
# The library logs every connection's opening and closing at INFO: only its warnings reach our log.
QUIET = logging.getLogger("asyncfl.websockets")
QUIET.setLevel(logging.WARNING)


class ConnectionClosed(OSError):
    """The peer closed the connection (or broke the protocol, which closes it)."""

    def __init__(self, reason: str, code: int | None = None):
        super().__init__(reason)
        self.code = code


class Silence(ConnectionClosed):
    """A read or write waited longer than the socket's timeout without a byte moving (the connection is
    dropped: what was sent or read of the message is lost)."""


class Connection:
    """An open WebSocket connection over a connected socket. Not thread-safe for two readers; sends are
    serialised; ``shutdown`` may be called from any thread to cut a blocked read or write."""

    def __init__(self, sock: socket.socket, protocol: ClientProtocol | ServerProtocol, events=()):
        self.sock, self.protocol = sock, protocol
        protocol.reader.armed = True
        self.closed = False
        self._events = deque(events)  # frames parsed but not yet read (e.g. sent along with the handshake)
        self._send_lock = threading.Lock()
        self.mark()  # last_active: when the peer last sent something (or a request began)

    def mark(self) -> None:
        """Start timing a request: when the reply's first byte came, the longest wait for one after it."""
        self.marked_at = self.last_active = time.monotonic()
        self.first_byte_at: float | None = None
        self.longest_gap_s = 0.0

    @classmethod
    def open(cls, sock: socket.socket, is_client: bool, max_size: int) -> Connection:
        """A connection whose handshake is already done (or not needed, as between two tests' sockets)."""
        protocol = ClientProtocol(parse_uri("ws://peer/"), state=State.OPEN, max_size=max_size, logger=QUIET) \
            if is_client else ServerProtocol(state=State.OPEN, max_size=max_size, logger=QUIET)
        return cls(sock, bigframes.install(protocol))

    def send(self, message: bytes | bytearray | memoryview | str | list) -> None:
        """Send one message: bytes, a str (a text message), or a list of buffers sent as one binary message."""
        if self.closed or self.protocol.state is not State.OPEN:
            raise ConnectionClosed("connection is closed")
        with self._send_lock:
            if isinstance(message, str):
                self.protocol.send_text(message.encode())
                return self._flush()
            parts = message if isinstance(message, list) else [message]
            if sum(len(m) for m in parts) < bigframes.BIG_BYTES:
                self.protocol.send_binary(b"".join(parts))
                return self._flush()
            self._flush()  # anything the protocol still holds goes first
            try:
                bigframes.send_binary(self.sock, parts, mask=self.protocol.side is Side.CLIENT)
            except OSError as e:
                raise self._broken(e, "sent") from None

    def recv(self) -> bytes | bytearray | str:
        """The next whole message: a str for text, bytes-like for binary."""
        parts, kind = [], None
        while True:
            frame = self._next_frame()
            if frame.opcode is Opcode.CLOSE:
                code = self.protocol.close_rcvd.code if self.protocol.close_rcvd else None
                self.close_socket()
                raise ConnectionClosed(f"closed by the peer (code {code})", code)
            if frame.opcode in (Opcode.PING, Opcode.PONG):
                continue  # the library has queued the pong; _next_frame sent it
            kind = kind or frame.opcode  # the library lets no continuation frame start a message
            parts.append(frame.data)
            if frame.fin:
                break
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        if kind is Opcode.BINARY:
            return data
        try:
            return bytes(data).decode()
        except UnicodeDecodeError:
            self.close(CloseCode.INVALID_DATA, "text message is not UTF-8")
            raise ConnectionClosed("text message is not UTF-8", CloseCode.INVALID_DATA) from None

    def _next_frame(self):
        while not self._events:
            if self.protocol.state is not State.OPEN:
                raise self._ended()
            try:
                n = bigframes.receive(self.sock, self.protocol, READ_BYTES)
            except OSError as e:
                raise self._broken(e, "received") from None
            if n:
                now = time.monotonic()
                if self.first_byte_at is None:
                    self.first_byte_at = now
                elif now - self.last_active > self.longest_gap_s:
                    self.longest_gap_s = now - self.last_active
                self.last_active = now
            self._events.extend(self.protocol.events_received())
            with self._send_lock:
                self._flush()  # pongs, the answer to a close, the close after a protocol error
        return self._events.popleft()

    def _ended(self) -> ConnectionClosed:
        """Why the protocol left OPEN with no frame to show for it: EOF, a protocol error, a close sent."""
        exc, sent = self.protocol.parser_exc, self.protocol.close_sent
        self.close_socket()
        if isinstance(exc, EOFError) or exc is None and sent is None:
            return ConnectionClosed("connection closed by the peer")
        return ConnectionClosed(str(exc) if exc else f"closed (code {sent.code})", sent.code if sent else None)

    def _flush(self) -> None:
        try:
            for data in self.protocol.data_to_send():
                if data:
                    bigframes.send_all(self.sock, data)
                elif not isinstance(self.sock, ssl.SSLSocket):
                    self.sock.shutdown(socket.SHUT_WR)  # the library's end of stream
        except OSError as e:
            raise self._broken(e, "sent") from None

    def _broken(self, e: OSError, direction: str) -> ConnectionClosed:
        """A read or write failed, and with it the connection: what to raise (Silence for a timeout)."""
        self.close_socket()
        if isinstance(e, TimeoutError) and self.sock.gettimeout() is not None:  # (not a keepalive's ETIMEDOUT)
            return Silence(f"no byte {direction} for {self.sock.gettimeout():g} s")
        return ConnectionClosed(f"{'send' if direction == 'sent' else 'receive'} failed: {e}")

    def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Send a close frame (best effort, no waiting for the answer) and close the socket."""
        if not self.closed and self.protocol.state is State.OPEN:
            with self._send_lock, contextlib.suppress(ConnectionClosed):
                self.protocol.send_close(code, reason)
                self._flush()
        self.close_socket()

    def shutdown(self) -> None:
        """Cut a read or write blocked in another thread (it raises ConnectionClosed)."""
        cut(self.sock)

    def close_socket(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.close()
        # The library's parser is a generator holding its protocol (a cycle), and a payload cut short
        # holds its whole buffer: closed here, both go with the last reference, not at the next full gc.
        with contextlib.suppress(ValueError, RuntimeError):  # (running in another thread: left to the gc)
            self.protocol.parser.close()

    @property
    def remote_address(self):
        with contextlib.suppress(OSError):
            return self.sock.getpeername()


def cut(sock: socket.socket) -> None:
    """End both directions of a socket another thread may be blocked on (its read returns at once)."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def tune(sock: socket.socket, tcp_cc: str | None = None) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a reply's last segment goes at once
        if tcp_cc:
            tcp.set_congestion(sock, tcp_cc)
