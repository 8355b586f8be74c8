"""A lean WebSocket (RFC 6455) connection for one request/reply at a time, and the client's handshake.

Why not the ``websockets`` library's sync API: it reads every socket in a background thread that parses
frames in Python 64 KiB at a time and hands messages over through a queue, and with several servers the
client's reader threads fought its training threads for the GIL (docs/performance.md). Here the thread
that waits for a reply reads it itself: the frame header, then the payload straight into one buffer with
``recv_into``, unmasked in place with numpy. Sending is one ``sendmsg`` of the header and the payload
(masked into a fresh buffer on the client, as the RFC requires). The server's side is wsserver.py.

What it speaks is plain WebSocket: any client (``websockets``, a browser) can talk to a data server, and
the client can talk to any WebSocket server. Supported: the opening handshake (version 13, with the
``Authorization`` header checked before the upgrade, see auth.py), binary and text messages,
fragmentation, ping/pong and the closing handshake; frames above ``max_size`` close the connection with
code 1009 before their payload is read. Not supported: extensions (compression is never negotiated).
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import ssl
import struct
import threading
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import urlsplit

import numpy as np

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HANDSHAKE_BYTES = 16 * 1024
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class ConnectionClosed(OSError):
    """The peer closed the connection (or broke the protocol, which closes it)."""

    def __init__(self, reason: str, code: int | None = None):
        super().__init__(reason)
        self.code = code


class Silence(ConnectionClosed):
    """A read or write waited longer than the socket's timeout without a byte moving (the connection is
    dropped: what was sent or read of the message is lost)."""


class HandshakeRefused(OSError):
    """The server answered the opening handshake with an HTTP status other than 101."""

    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}: {body.strip()[:200]}")
        self.status = status


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def unmask_in_place(buf: bytearray | memoryview, mask: bytes) -> None:
    """buf XOR mask (repeated), four bytes at a time with numpy (masking and unmasking are the same)."""
    n = len(buf)
    words = n // 4
    if words:
        view = np.frombuffer(buf, dtype=np.uint32, count=words)
        np.bitwise_xor(view, np.frombuffer(mask, dtype=np.uint32)[0], out=view)
    for i in range(words * 4, n):
        buf[i] ^= mask[i % 4]


class Connection:
    """One WebSocket connection over a connected socket (after the handshake). Not thread-safe for two
    readers or two writers; ``shutdown`` may be called from any thread to cut a blocked read or write."""

    def __init__(self, sock: socket.socket, is_client: bool, max_size: int):
        self.sock, self.is_client, self.max_size = sock, is_client, max_size
        self.closed = False
        self._send_lock = threading.Lock()  # a pong from the reader must not interleave with a message
        # Buffers reused from message to message: a fresh 1.7 MB bytearray (zeroing, page faults) costs
        # many times the copy itself.
        self._rbuf = bytearray(0)
        self._sbuf = bytearray(0)

    # ---- sending -----------------------------------------------------------------------------------------

    def send(self, message: bytes | bytearray | memoryview | str | list) -> None:
        """Send one message: bytes, a str (a text message), or a list of buffers sent as one binary message
        without joining them first (see wire.encode_parts)."""
        if isinstance(message, str):
            self._send_frame(OP_TEXT, [message.encode()])
        elif isinstance(message, list):
            self._send_frame(OP_BINARY, message)
        else:
            self._send_frame(OP_BINARY, [message])

    def _send_frame(self, opcode: int, parts: list) -> None:
        if self.closed:
            raise ConnectionClosed("connection is closed")
        parts = [memoryview(p).cast("B") for p in parts]
        n = sum(len(p) for p in parts)
        head = bytearray([0x80 | opcode])
        mask_bit = 0x80 if self.is_client else 0
        if n < 126:
            head.append(mask_bit | n)
        elif n < 1 << 16:
            head.append(mask_bit | 126)
            head += struct.pack("!H", n)
        else:
            head.append(mask_bit | 127)
            head += struct.pack("!Q", n)
        if self.is_client:  # clients must mask every frame (RFC 6455 5.3): one copy, XORed in place
            mask = os.urandom(4)
            head += mask
            if len(self._sbuf) < n:
                self._sbuf = bytearray(n)
            payload, pos = memoryview(self._sbuf)[:n], 0
            for p in parts:
                payload[pos : pos + len(p)] = p
                pos += len(p)
            unmask_in_place(payload, mask)
            parts = [payload]
        with self._send_lock:
            try:
                if isinstance(self.sock, ssl.SSLSocket):  # no sendmsg over TLS
                    self.sock.sendall(b"".join([bytes(head), *parts]))
                else:
                    _sendmsg_all(self.sock, [head, *parts])
            except OSError as e:
                raise self._broken(e, "sent") from None

    # ---- receiving ---------------------------------------------------------------------------------------

    def recv(self) -> memoryview | bytes | str:
        """The next whole message: a str for text; for binary, a buffer that is valid until the next
        ``recv`` (it is reused). Answers pings and closes on its way."""
        parts: list = []
        size, kind = 0, None
        while True:
            fin, opcode, payload = self._read_frame(size)
            if opcode >= 0x8:  # control frame, possibly between the fragments of a message
                self._control(opcode, payload)
                continue
            if opcode == OP_CONT:
                if kind is None:
                    self._fail(1002, "continuation without a message")
            elif kind is not None:
                self._fail(1002, "new message inside a fragmented one")
            elif opcode in (OP_TEXT, OP_BINARY):
                kind = opcode
            else:
                self._fail(1002, f"unknown opcode {opcode}")
            if not fin or parts:  # fragments are kept as copies: the next frame reuses the buffer
                payload = bytes(payload)
            parts.append(payload)
            size += len(payload)
            if fin:
                data = parts[0] if len(parts) == 1 else b"".join(parts)
                if kind == OP_TEXT:
                    try:
                        return bytes(data).decode()
                    except UnicodeDecodeError:
                        self._fail(1007, "text message is not UTF-8")
                return data

    def _read_frame(self, size_so_far: int) -> tuple[bool, int, memoryview]:
        b0, b1 = self._read_exact(2)
        if b0 & 0x70:
            self._fail(1002, "reserved bits set (no extension was negotiated)")
        fin, opcode, masked, n = bool(b0 & 0x80), b0 & 0x0F, bool(b1 & 0x80), b1 & 0x7F
        if masked == self.is_client:  # clients must mask, servers must not
            self._fail(1002, "frame masking does not match the peer's role")
        if n == 126:
            (n,) = struct.unpack("!H", self._read_exact(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", self._read_exact(8))
        if opcode >= 0x8 and (n > 125 or not fin):
            self._fail(1002, "control frames are short and unfragmented")
        if size_so_far + n > self.max_size:
            self._fail(1009, f"message larger than {self.max_size} bytes")
        mask = bytes(self._read_exact(4)) if masked else None
        if len(self._rbuf) < n:
            self._rbuf = bytearray(n)
        payload = self._read_exact(n, memoryview(self._rbuf)[:n])
        if mask:
            unmask_in_place(payload, mask)
        return fin, opcode, payload

    def _read_exact(self, n: int, into: memoryview | None = None) -> memoryview:
        view = memoryview(bytearray(n)) if into is None else into
        got = 0
        try:
            while got < n:
                k = self.sock.recv_into(view[got:], n - got)
                if k == 0:
                    self.closed = True
                    raise ConnectionClosed("connection closed by the peer")
                got += k
        except ConnectionClosed:
            raise
        except OSError as e:
            raise self._broken(e, "received") from None
        return view

    def _broken(self, e: OSError, direction: str) -> ConnectionClosed:
        """A read or write failed, and with it the connection: what to raise (Silence for a timeout)."""
        self.closed = True
        if isinstance(e, TimeoutError):
            return Silence(f"no byte {direction} for {self.sock.gettimeout():g} s")
        return ConnectionClosed(f"{'send' if direction == 'sent' else 'receive'} failed: {e}")

    def _control(self, opcode: int, payload: bytearray) -> None:
        if opcode == OP_PING:
            self._send_frame(OP_PONG, [bytes(payload)])
        elif opcode == OP_CLOSE:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            if not self.closed:
                try:
                    self._send_frame(OP_CLOSE, [bytes(payload[:2])])
                except ConnectionClosed:
                    pass
            self.close_socket()
            raise ConnectionClosed(f"closed by the peer (code {code})", code)
        elif opcode != OP_PONG:
            self._fail(1002, f"unknown control opcode {opcode}")

    def _fail(self, code: int, reason: str):
        """Protocol error: send a close frame with ``code`` and drop the connection."""
        try:
            self._send_frame(OP_CLOSE, [struct.pack("!H", code) + reason.encode()[:100]])
        except ConnectionClosed:
            pass
        self.close_socket()
        raise ConnectionClosed(reason, code)

    # ---- closing -----------------------------------------------------------------------------------------

    def close(self, code: int = 1000) -> None:
        """Send a close frame (best effort, no waiting for the answer) and close the socket."""
        if not self.closed:
            try:
                self._send_frame(OP_CLOSE, [struct.pack("!H", code)])
            except ConnectionClosed:
                pass
        self.close_socket()

    def shutdown(self) -> None:
        """Cut a read or write blocked in another thread (it raises ConnectionClosed)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close_socket(self) -> None:
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass

    @property
    def remote_address(self):
        try:
            return self.sock.getpeername()
        except OSError:
            return None


def _sendmsg_all(sock: socket.socket, buffers: list) -> None:
    views = [memoryview(b).cast("B") for b in buffers if len(b)]
    while views:
        sent = sock.sendmsg(views)
        while views and sent >= len(views[0]):
            sent -= len(views[0])
            views.pop(0)
        if views and sent:
            views[0] = views[0][sent:]


def _tune(sock: socket.socket) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a reply's last segment goes at once


# ---- client ----------------------------------------------------------------------------------------------


def connect(uri: str, headers: dict[str, str], ssl_context: ssl.SSLContext | None, max_size: int,
            timeout_s: float) -> Connection:
    """Open a WebSocket connection to ws://host:port/path or wss://...; raises HandshakeRefused for a
    non-101 answer and OSError for anything on the way."""
    parts = urlsplit(uri)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a ws:// or wss:// address: {uri!r}")
    if parts.scheme == "wss" and ssl_context is None:
        raise ValueError("wss:// needs a TLS context")
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    sock = socket.create_connection((parts.hostname, port), timeout=timeout_s)
    try:
        _tune(sock)
        if parts.scheme == "wss":
            sock = ssl_context.wrap_socket(sock, server_hostname=parts.hostname)
        key = base64.b64encode(os.urandom(16)).decode()
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        lines = [f"GET {parts.path or '/'} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        status, response_headers, rest = _read_http(sock)
        if status != 101:
            raise HandshakeRefused(status, rest.decode(errors="replace"))
        if response_headers.get("sec-websocket-accept") != accept_key(key):
            raise ConnectionClosed("the server's handshake answer does not match the key")
        if rest:
            raise ConnectionClosed("data before the first frame")
        sock.settimeout(None)
        return Connection(sock, is_client=True, max_size=max_size)
    except BaseException:
        sock.close()
        raise


def _read_http(sock: socket.socket) -> tuple[int | str, dict[str, str], bytes]:
    """Read an HTTP head (request or response line + headers) and whatever came after it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionClosed("connection closed during the handshake")
        data += chunk
        if len(data) > MAX_HANDSHAKE_BYTES:
            raise ConnectionClosed("handshake too large")
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    first = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if first[0].startswith("HTTP/"):
        try:
            return int(first[1]), headers, rest
        except (IndexError, ValueError):
            raise ConnectionClosed("malformed HTTP status line") from None
    return lines[0], headers, rest




@dataclass
class Refusal:
    status: HTTPStatus
    text: str


