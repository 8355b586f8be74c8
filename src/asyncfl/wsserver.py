"""A data owner's WebSocket endpoint: accept connections, answer the opening handshake, serve each.

``Server`` accepts on a listening socket, runs the handshake (with the token check, see auth.py, before
the upgrade) and hands each accepted connection (a transport.Connection) to its handler in a thread of
its own. The client side of the protocol is in transport.py.
"""

from __future__ import annotations

import socket
import ssl
import threading
from http import HTTPStatus
from typing import Callable

from asyncfl.transport import Connection, Refusal, _read_http, _tune, accept_key


def server_handshake(sock: socket.socket, check: Callable[[dict[str, str], tuple], Refusal | None],
                     max_size: int) -> Connection | None:
    """Answer one client's opening handshake on an accepted socket: a Connection, or None after an HTTP
    error answer (bad request, or ``check`` refused it, e.g. without the token)."""
    request_line, headers, rest = _read_http(sock)
    peer = sock.getpeername()
    method, _, _ = str(request_line).partition(" ")
    refusal = None
    if method != "GET" or headers.get("upgrade", "").lower() != "websocket" or \
            "upgrade" not in headers.get("connection", "").lower() or "sec-websocket-key" not in headers:
        refusal = Refusal(HTTPStatus.BAD_REQUEST, "a WebSocket upgrade request is expected\n")
    elif headers.get("sec-websocket-version") != "13":
        refusal = Refusal(HTTPStatus.UPGRADE_REQUIRED, "WebSocket version 13 is required\n")
    elif rest:
        refusal = Refusal(HTTPStatus.BAD_REQUEST, "data before the handshake completed\n")
    else:
        refusal = check(headers, peer)
    if refusal is not None:
        body = refusal.text.encode()
        sock.sendall(f"HTTP/1.1 {refusal.status.value} {refusal.status.phrase}\r\nContent-Type: text/plain\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        return None
    sock.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Accept: {accept_key(headers['sec-websocket-key'])}\r\n\r\n").encode())
    return Connection(sock, is_client=False, max_size=max_size)


class Server:
    """Accepts connections on a listening socket, one thread per connection: the handshake (within
    ``open_timeout_s``), then ``handler(conn)``. ``shutdown`` stops accepting and cuts open connections."""

    def __init__(self, host: str, port: int, handler: Callable[[Connection], None],
                 check: Callable[[dict[str, str], tuple], Refusal | None], max_size: int,
                 ssl_context: ssl.SSLContext | None = None, open_timeout_s: float = 10.0, name: str = "server",
                 on_error: Callable[[str], None] | None = None):
        self.socket = socket.create_server((host, port), reuse_port=False)
        self.handler, self.check, self.max_size = handler, check, max_size
        self.ssl_context, self.open_timeout_s, self.name = ssl_context, open_timeout_s, name
        self.on_error = on_error or (lambda msg: None)
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopping = False

    def serve_forever(self) -> None:
        while not self._stopping:
            try:
                sock, _ = self.socket.accept()
            except OSError:
                if self._stopping:
                    return
                continue
            threading.Thread(target=self._serve_one, args=(sock,), name=f"{self.name}-conn", daemon=True).start()

    def _serve_one(self, sock: socket.socket) -> None:
        with self._lock:
            if self._stopping:
                sock.close()
                return
            self._conns.add(sock)
        try:
            _tune(sock)
            sock.settimeout(self.open_timeout_s)  # a peer that never finishes its handshake is dropped
            if self.ssl_context is not None:
                raw, sock = sock, self.ssl_context.wrap_socket(sock, server_side=True)
                with self._lock:  # the TLS socket replaces the raw one (which it took the descriptor of)
                    self._conns.discard(raw)
                    self._conns.add(sock)
            conn = server_handshake(sock, self.check, self.max_size)
            if conn is None:
                return
            sock.settimeout(None)
            self.handler(conn)
        except (OSError, ValueError, UnicodeError) as e:  # a stranger that is not speaking WebSocket (or TLS)
            self.on_error(f"{type(e).__name__}: {e}")
        finally:
            with self._lock:
                self._conns.discard(sock)
            try:
                sock.close()
            except OSError:
                pass

    def shutdown(self) -> None:
        with self._lock:
            self._stopping = True
            conns = list(self._conns)
        try:
            self.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.socket.close()
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
