"""Who may talk to a data server: a shared token, checked before the websocket opens, and optional TLS.

A data server holds private data. When a token is set (``--token`` or the ``ASYNCFL_TOKEN`` environment
variable, which, unlike a flag, ``ps`` does not show), every connection must send it in its opening
handshake as ``Authorization: Bearer <token>``; one without it, or with another, is answered
``401 Unauthorized`` and closed: no message of the protocol is ever read from it, so no training happens.
A server listening beyond this machine's loopback must have a token (``server/main.py`` refuses to start
otherwise). The token travels in clear on ``ws://``: for servers on other hosts, add TLS (``--certfile``
and ``--keyfile`` on the server, ``wss://`` addresses and, for a self-signed certificate, ``--cafile`` on
the client).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import ssl
from dataclasses import dataclass
from http import HTTPStatus

TOKEN_ENV = "ASYNCFL_TOKEN"
MIN_TOKEN_CHARS = 16  # a shared secret shorter than this is guessable

log = logging.getLogger("asyncfl.auth")


@dataclass
class Refusal:
    """A data server's answer to a handshake it refuses (see wsserver.Server's ``check``)."""

    status: HTTPStatus
    text: str


def resolve_token(flag_value: str) -> str | None:
    """The token from the flag, else from ``ASYNCFL_TOKEN``, else None; too short a token is refused."""
    token = flag_value or os.environ.get(TOKEN_ENV, "")
    if not token:
        return None
    if len(token) < MIN_TOKEN_CHARS or not token.isprintable() or " " in token:
        raise ValueError(f"the token must be at least {MIN_TOKEN_CHARS} printable characters without spaces")
    return token


def is_loopback(host: str) -> bool:
    """Is ``host`` an address only this machine can reach (127.0.0.0/8, ::1, localhost)?"""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name or a wildcard ("", "0.0.0.0" is not loopback either)


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def token_check(token: str | None, server_name: str):
    """The handshake check of a data server (see wsserver.Server): refuse ``401`` without the token."""
    expected = f"Bearer {token}".encode() if token else None

    def check(headers: dict[str, str], peer) -> Refusal | None:
        if expected is None:
            return None
        given = headers.get("authorization", "")
        if hmac.compare_digest(given.encode(), expected):  # constant time: no guessing by timing
            return None
        log.warning("%s refused a connection from %s: %s token", server_name, peer, "wrong" if given else "no",
                    extra={"who": server_name})
        return Refusal(HTTPStatus.UNAUTHORIZED, "a valid token is required\n")

    return check


def server_ssl_context(certfile: str, keyfile: str) -> ssl.SSLContext | None:
    if not certfile and not keyfile:
        return None
    if not (certfile and keyfile):
        raise ValueError("TLS needs both --certfile and --keyfile")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile, keyfile)
    return ctx


def client_ssl_context(uri: str, cafile: str) -> ssl.SSLContext | None:
    """For wss:// addresses: verify the server against ``cafile`` (a self-signed certificate or a private
    CA) or, without it, against the system's CAs. Never unverified."""
    if not uri.startswith("wss://"):
        return None
    ctx = ssl.create_default_context(cafile=cafile or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
