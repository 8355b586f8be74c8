"""A data owner's WebSocket endpoint: one selector loop answers every opening handshake; a connection gets
a thread of its own only once its handshake (and token, see net/auth.py) is accepted.

Idle or slow peers cannot lock the door: handshakes are read without blocking, each within
``open_timeout_s``; at most ``max_pending`` unauthenticated connections are held (the one idle longest is
closed to make room for a new one), and at most ``max_per_token`` accepted connections per token (the
one idle longest is cut: a client that reconnects has given up on its old connection). The loop survives
every error in one connection (logged and counted); if it can no longer accept at all it calls
``on_fatal``, and the data owner's process exits so that server/main.py starts it again. TCP keepalive ends a connection
whose peer vanished without a word (a lost FIN, a host gone): otherwise its thread would wait for a
request forever, holding its memory. The client's side is net/wsclient.py.
"""

from __future__ import annotations

import errno
import resource
import selectors
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from websockets.server import ServerProtocol

from asyncfl.net import bigframes, tcp
from asyncfl.net.auth import Refusal
from asyncfl.net.transport import QUIET, Connection, cut, tune

HANDSHAKE_READ_BYTES = 16 * 1024
KEEPALIVE = (60, 10, 6)  # first probe after 60 s of silence, then every 10 s; 6 unanswered: the peer is gone


@dataclass(eq=False)
class _Peer:
    sock: socket.socket
    deadline: float  # time.monotonic() by which the handshake must be done
    active: float  # when it last sent something
    protocol: ServerProtocol | None = None
    tls_pending: bool = False
    addr: tuple = ()


@dataclass(eq=False)
class _Open:
    sock: socket.socket
    key: str  # the Authorization header it was accepted with
    since: float = field(default_factory=time.monotonic)
    conn: Connection | None = None

    def active(self) -> float:
        return self.conn.last_active if self.conn is not None else self.since


def raise_open_files_limit(needed: int) -> int:
    """Raise this process's soft limit on open files to ``needed`` (within the hard limit); the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def keep_alive(sock: socket.socket, idle_s: int, interval_s: int, probes: int) -> None:
    """Have the kernel probe a silent TCP peer (a live one answers without its program's help) and fail the
    socket's reads with ETIMEDOUT once ``probes`` probes in a row go unanswered."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or not hasattr(socket, "TCP_KEEPIDLE"):
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, probes)


class Server:
    """``serve_forever`` runs the handshake loop; ``handler(conn)`` serves an accepted connection in its
    own thread; ``shutdown`` stops the loop and cuts every connection."""

    def __init__(self, host: str, port: int, handler: Callable[[Connection], None],
                 check: Callable[[dict, tuple], Refusal | None], max_size: int,
                 ssl_context: ssl.SSLContext | None = None, open_timeout_s: float = 5.0, name: str = "server",
                 on_error: Callable[[str], None] | None = None, on_fatal: Callable[[str], None] | None = None,
                 max_pending: int = 256, max_per_token: int = 16, keepalive: tuple[int, int, int] = KEEPALIVE,
                 tcp_cc: str | None = None):
        self.socket = socket.create_server((host, port), backlog=1024, reuse_port=False)  # a burst waits, not refused
        self.tcp_cc = tcp_cc  # set on the listener (which accepted sockets inherit) and on each accepted one
        if tcp_cc:
            try:
                tcp.set_congestion(self.socket, tcp_cc)
            except BaseException:
                self.socket.close()
                raise
        self.socket.setblocking(False)
        self.handler, self.check, self.max_size = handler, check, max_size
        self.ssl_context, self.open_timeout_s, self.name = ssl_context, open_timeout_s, name
        self.on_error = on_error or (lambda msg: None)
        self.on_fatal = on_fatal or (lambda msg: None)
        self.max_pending, self.max_per_token, self.keepalive = max_pending, max_per_token, keepalive
        self.open_files = raise_open_files_limit(max_pending + 4 * max_per_token + 64)
        self.errors = 0  # exceptions the loop caught and survived
        self.evicted = 0  # connections closed to make room (pending or per token)
        self._pending: dict[socket.socket, _Peer] = {}
        self._open: dict[str, list[_Open]] = {}
        self._lock = threading.Lock()  # guards _open (threads remove themselves) and _stopping
        self._stopping = False
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()

    # ---- the loop ---------------------------------------------------------------------------------------

    def serve_forever(self) -> None:
        self._selector.register(self.socket, selectors.EVENT_READ, "listen")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self._stopping:
                try:
                    self._step()
                except Exception as e:  # one peer's trouble must not end the loop
                    self.errors += 1
                    self.on_error(f"handshake loop: {type(e).__name__}: {e}")
                    time.sleep(0.01)  # an error that repeats at once must not spin a core
        finally:
            for peer in list(self._pending.values()):
                self._drop(peer)
            self._selector.close()

    def _step(self) -> None:
        now = time.monotonic()
        soonest = min((p.deadline for p in self._pending.values()), default=now + 1.0)
        for key, _ in self._selector.select(max(0.0, soonest - now)):
            if key.data == "listen":
                self._accept_some()
            elif key.data == "wake":
                self._wake_r.recv(64)
            else:
                self._advance(key.data)
        now = time.monotonic()
        for peer in [p for p in self._pending.values() if p.deadline <= now]:
            self._drop(peer)  # a handshake not done in time

    def _accept_some(self) -> None:
        for _ in range(64):  # then let the handshakes in progress have their turn
            try:
                sock, addr = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.errors += 1
                    if not self._evict_pending():  # free a descriptor, or wait for one to be freed
                        time.sleep(0.05)
                    return
                if e.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue  # the peer gave up before we took it
                self.on_fatal(f"cannot accept connections any more: {e}")
                self._stopping = True
                return
            if len(self._pending) >= self.max_pending:
                self._evict_pending()
            now = time.monotonic()
            peer = _Peer(sock, now + self.open_timeout_s, now, addr=addr)
            try:
                sock.setblocking(False)
                tune(sock, self.tcp_cc)
                keep_alive(sock, *self.keepalive)
                if self.ssl_context is not None:
                    peer.sock = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                    peer.tls_pending = True
                peer.protocol = bigframes.install(ServerProtocol(max_size=self.max_size, logger=QUIET))
                self._pending[peer.sock] = peer
                self._selector.register(peer.sock, selectors.EVENT_READ, peer)
            except (OSError, ValueError) as e:
                self.on_error(f"{type(e).__name__}: {e}")
                self._drop(peer)

    def _evict_pending(self) -> bool:
        if not self._pending:
            return False
        self._drop(min(self._pending.values(), key=lambda p: p.active))
        self.evicted += 1
        return True

    def _advance(self, peer: _Peer) -> None:
        """Read what a pending peer sent: finish TLS, then the HTTP upgrade; answer it once complete."""
        peer.active = time.monotonic()
        try:
            if peer.tls_pending:
                peer.sock.do_handshake()
                peer.tls_pending = False
            data = peer.sock.recv(HANDSHAKE_READ_BYTES)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return  # more to come (a TLS handshake that wants to write has tiny records: the buffer takes them)
        except (OSError, ValueError) as e:
            self.on_error(f"{type(e).__name__}: {e}")
            return self._drop(peer)
        if not data:
            return self._drop(peer)
        protocol = peer.protocol
        protocol.receive_data(data)
        events = protocol.events_received()
        if not events:
            if protocol.handshake_exc is not None:  # not HTTP, or headers too large: say so if we can, close
                self._answer(peer, b"".join(protocol.data_to_send()))
                self.on_error(f"bad handshake from {peer.addr}: {protocol.handshake_exc}")
                self._drop(peer)
            return
        request, frames = events[0], events[1:]
        refusal = self.check(request.headers, peer.addr)
        response = protocol.reject(refusal.status, refusal.text) if refusal else protocol.accept(request)
        protocol.send_response(response)
        out = b"".join(protocol.data_to_send())
        if response.status_code != 101:  # refused by us, or not a valid upgrade (the library's 400/426)
            self._answer(peer, out)
            return self._drop(peer)
        self._forget(peer)
        self._admit(peer, request.headers.get("Authorization", ""), out, frames)

    def _answer(self, peer: _Peer, out: bytes) -> None:
        try:
            peer.sock.send(out)  # one short answer: it fits the socket's buffer, or the peer misses it
        except (OSError, ValueError):
            pass

    def _admit(self, peer: _Peer, key: str, response: bytes, frames: list) -> None:
        entry = _Open(peer.sock, key)
        with self._lock:
            same = self._open.setdefault(key, [])
            if len(same) >= self.max_per_token:
                oldest = min(same, key=_Open.active)
                same.remove(oldest)
                self.evicted += 1
                cut(oldest.sock)
            same.append(entry)
        try:
            threading.Thread(target=self._serve, args=(entry, peer.protocol, response, frames),
                             name=f"{self.name}-conn", daemon=True).start()
        except RuntimeError as e:  # can't start new thread: refuse this one, keep the door open
            self.errors += 1
            self.on_error(f"no thread for a connection from {peer.addr}: {e}")
            self._release(entry)
            peer.sock.close()

    def _serve(self, entry: _Open, protocol: ServerProtocol, response: bytes, frames: list) -> None:
        sock = entry.sock
        try:
            sock.setblocking(True)
            sock.settimeout(self.open_timeout_s)
            sock.sendall(response)
            sock.settimeout(None)
            entry.conn = Connection(sock, protocol, frames)
            self.handler(entry.conn)
        except (OSError, ValueError) as e:
            self.on_error(f"{type(e).__name__}: {e}")
        finally:
            self._release(entry)
            try:
                sock.close()
            except OSError:
                pass

    def _release(self, entry: _Open) -> None:
        with self._lock:
            same = self._open.get(entry.key, [])
            if entry in same:
                same.remove(entry)

    def _forget(self, peer: _Peer) -> None:
        self._pending.pop(peer.sock, None)
        try:
            self._selector.unregister(peer.sock)
        except (KeyError, ValueError):
            pass

    def _drop(self, peer: _Peer) -> None:
        self._forget(peer)
        try:
            peer.sock.close()
        except OSError:
            pass

    # ---- stopping ---------------------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        with self._lock:
            accepted = sum(len(v) for v in self._open.values())
        return {"pending": len(self._pending), "open": accepted, "errors": self.errors, "evicted": self.evicted}

    def shutdown(self) -> None:
        with self._lock:
            self._stopping = True
            conns = [o.sock for same in self._open.values() for o in same]
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self.socket.close()
        for s in conns:
            cut(s)
