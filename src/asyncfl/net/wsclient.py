"""The client's side of a WebSocket connection to a data owner: the opening handshake, parsed by the
``websockets`` library's ``ClientProtocol``, with the token in its headers; the connection is
transport.Connection. The data owner's side is net/wsserver.py."""

from __future__ import annotations

import socket
import ssl

from websockets.client import ClientProtocol
from websockets.exceptions import InvalidStatus, InvalidURI
from websockets.protocol import State
from websockets.uri import parse_uri

from asyncfl.net import bigframes, tcp
from asyncfl.net.transport import QUIET, READ_BYTES, Connection, ConnectionClosed, tune


class HandshakeTimeout(TimeoutError):
    """The TCP connection was made but the opening handshake's answer did not come in time (websocket-client
    0.57, PySyft 0.2.3's client, raised its own WebSocketTimeoutException here, not socket.timeout)."""


class HandshakeRefused(OSError):
    """The server answered the opening handshake with an HTTP status other than 101."""

    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}: {body.strip()[:200]}")
        self.status = status


def open_tcp(host: str, port: int, timeout_s: float, tcp_cc: str | None = None) -> socket.socket:
    """``socket.create_connection``, with the congestion control set before the SYN (raises tcp.CcError)."""
    error: OSError | None = None
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        try:
            if tcp_cc:
                tcp.set_congestion(sock, tcp_cc)
            sock.settimeout(timeout_s)
            sock.connect(address)
            return sock
        except BaseException as e:
            sock.close()
            if not isinstance(e, OSError):
                raise
            error = e
    raise error or OSError(f"{host} has no address")


def connect(uri: str, headers: dict[str, str], ssl_context: ssl.SSLContext | None, max_size: int,
            timeout_s: float, tcp_cc: str | None = None) -> Connection:
    """Open a WebSocket connection to ws://host:port/path or wss://...; raises HandshakeRefused for a
    non-101 answer, tcp.CcError for a congestion control the socket cannot have, OSError for anything
    on the way."""
    try:
        wsuri = parse_uri(uri)
    except InvalidURI:
        raise ValueError(f"not a ws:// or wss:// address: {uri!r}") from None
    if wsuri.secure and ssl_context is None:
        raise ValueError("wss:// needs a TLS context")
    sock = open_tcp(wsuri.host, wsuri.port, timeout_s, tcp_cc)
    try:
        tune(sock)
        if wsuri.secure:
            sock = ssl_context.wrap_socket(sock, server_hostname=wsuri.host)
        protocol = bigframes.install(ClientProtocol(wsuri, max_size=max_size, logger=QUIET))
        request = protocol.connect()
        for name, value in headers.items():
            request.headers[name] = value
        protocol.send_request(request)
        sock.sendall(b"".join(protocol.data_to_send()))
        events: list = []
        while not events and protocol.handshake_exc is None:
            try:
                eof = not bigframes.receive(sock, protocol, READ_BYTES)
            except TimeoutError as e:
                raise HandshakeTimeout(f"no answer to the opening handshake: {e}") from None
            events = protocol.events_received()
            if eof:
                break
        if protocol.state is not State.OPEN:
            exc = protocol.handshake_exc
            if isinstance(exc, InvalidStatus):
                raise HandshakeRefused(exc.response.status_code, exc.response.body.decode(errors="replace"))
            raise ConnectionClosed(f"the handshake failed: {exc or 'connection closed during the handshake'}")
        sock.settimeout(None)
        return Connection(sock, protocol, events[1:])
    except BaseException:
        sock.close()
        raise
