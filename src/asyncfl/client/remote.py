"""The model owner's handle on one data server (PySyft 0.2's ``RemoteServer``).

``connect`` retries until the server answers (or a deadline passes) and asks it ``hello``;
``fit(dataset_key=..., train_config=..., weights=...)`` runs one remote round and returns a ``FitResult``.
A round that gets no reply within its timeout (a lossy link can stall TCP for minutes) is cut off by
closing the socket, raising ``ConnectionLost``; ``reconnect`` then opens a new connection with back-off.
Every reply is checked before use (exact tensors, finite values, plausible numbers); a bad one raises
``BadReply`` and is never applied. With a token, each connection presents it (see net/auth.py); ``wss://``
addresses are verified against ``cafile`` or the system's CAs. With ``shared_memory``, a server reached
on loopback without emulated network conditions gets the weights through a shared memory segment of
each connection (see net/shm.py); ``weights_via`` says which way they travel. What a round sends and
receives is the wire's (client/wires/: ``modern``, or ``original``, PySyft 0.2.3's seven exchanges of hex
text); this handle keeps the connection, times each exchange and reads TCP_INFO around it.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from dataclasses import dataclass

import torch

from asyncfl.client import wires
from asyncfl.client.errors import BadReply, ConnectionLost, RemoteError
from asyncfl.client.watchdog import Watchdog
from asyncfl.core import datasets
from asyncfl.core.model import weight_spec
from asyncfl.core.protocol import FitResult, TrainConfig
from asyncfl.net import auth, shm, tcp, transport, wire, wsclient

log = logging.getLogger("asyncfl.client")

WEBSOCKET, SHARED_MEMORY = "websocket", "shared memory"  # how a connection moves the weights


@dataclass(frozen=True)
class RoundTcp:
    """What one request/reply did on the client socket's TCP (TCP_INFO before and after it, the largest
    backoff sampled while it was out) and how long it waited for bytes."""

    retrans_segs: int  # segments the client retransmitted
    rtos: int | None  # retransmission timeouts of the client socket (None: a kernel before 6.7)
    max_backoff: int  # largest exponential backoff of the client's RTO seen
    rto_ms: float  # the RTO at the end
    srtt_ms: float  # the smoothed RTT at the end
    first_byte_s: float  # from the start of the request to the reply's first byte
    longest_gap_s: float  # the longest wait for a byte within the reply

    def stall_s(self, server_work_s: float) -> float:
        """The longest the round waited without a byte, apart from the server's own work (its compute and
        pace idle, which it reports): the wait for the reply's first byte less that work, or a gap inside
        the reply, whichever is longer."""
        return max(0.0, self.first_byte_s - server_work_s, self.longest_gap_s)


class RemoteServer:
    def __init__(self, uri: str, name: str, token: str | None = None, cafile: str = "", shared_memory: bool = False,
                 timeout_on: str = "round", tcp_cc: str | None = None, dataset: str = datasets.DEFAULT,
                 wire: str = "modern"):
        self.uri, self.name = uri, name
        self.wire = wires.make(wire, dataset)
        self.tcp_cc = tcp_cc  # set on every connection's socket before it connects (None: the system's default)
        self.round_tcp: RoundTcp | None = None  # the last fit's, on a TCP connection
        self._in_flight = False
        self._max_backoff = 0
        # What a request's timeout bounds: "round", the whole request and reply (a watchdog cuts it off);
        # "silence", each wait for a byte to move (the socket's own timeout), as the original's websocket
        # client did with its 60 s: a slow transfer that keeps moving is never cut.
        if timeout_on not in ("round", "silence"):
            raise ValueError(f"timeout_on must be 'round' or 'silence', not {timeout_on!r}")
        self._silence = timeout_on == "silence"
        self._headers = auth.auth_headers(token)
        self._ssl = auth.client_ssl_context(uri, cafile)
        self.spec = weight_spec(dataset)  # the model of the run's dataset
        self.shared_memory = shared_memory and self.wire.shared_memory
        self.info: dict = {}
        self.weights_via = WEBSOCKET  # how this connection moves the weights: WEBSOCKET or SHARED_MEMORY
        self.segment: shm.Segment | None = None  # the connection's, if the wire attached one
        self._ws: transport.Connection | None = None
        self._timed_out = False
        self._watchdog: Watchdog | None = None  # started on the first request with a timeout

    def connect(self, timeout_s: float = 30.0) -> dict:
        """Open the connection, retrying while the server is not up yet; return its hello info."""
        deadline = time.monotonic() + timeout_s
        delay = 0.05
        while True:
            try:
                return self._open(max(1.0, deadline - time.monotonic()))
            except ConnectionLost as e:
                if time.monotonic() + delay > deadline:
                    raise ConnectionLost(f"cannot connect to {self.uri}: {e}") from None
                time.sleep(delay)  # back off between attempts to a server that is still starting
                delay = min(delay * 2, 1.0)

    def reconnect(self, stop: threading.Event, open_timeout_s: float, first_delay_s: float = 0.5,
                  max_delay_s: float = 8.0) -> bool:
        """Replace a lost connection, backing off between attempts (from ``first_delay_s``, doubling up to
        ``max_delay_s``); False if ``stop`` is set first."""
        self.close()
        delay = first_delay_s
        while not stop.is_set():
            try:
                self._open(open_timeout_s)
                return True
            except ConnectionLost:
                if stop.wait(delay):
                    break
                delay = min(delay * 2, max_delay_s)
        return False

    def reconnect_at_once(self, stop: threading.Event, open_timeout_s: float) -> bool:
        """The original's reconnection (its train_loop): close, connect again at once, and again while the
        TCP connect times out (``except timeout``); any other error is raised, a handshake that times out
        too (websocket-client raised WebSocketTimeoutException there, which that loop did not catch).
        False if ``stop`` is set first."""
        while not stop.is_set():
            self.close()
            try:
                self._open(open_timeout_s)
                return True
            except ConnectionLost as e:
                if e.silence_s is None or e.in_handshake:
                    raise
        return False

    def _open(self, open_timeout_s: float) -> dict:
        try:
            # No keepalive pings: the round timeout is the one liveness check. Data servers are reached
            # directly, never through an HTTP proxy.
            self._ws = wsclient.connect(self.uri, self._headers, self._ssl, wire.MAX_FRAME_BYTES, open_timeout_s,
                                        self.tcp_cc)
        except wsclient.HandshakeRefused as e:
            if e.status == 401:
                raise RemoteError(f"{self.uri} refused the connection: "
                                  f"{'wrong' if self._headers else 'no'} token (set {auth.TOKEN_ENV})") from None
            raise ConnectionLost(f"{self.uri}: {e}") from None
        except ssl.SSLCertVerificationError as e:
            raise RemoteError(f"{self.uri}: TLS certificate not trusted ({e.verify_message}); "
                              "pass --cafile with the server's certificate") from None
        except (OSError, TimeoutError) as e:
            timed_out = isinstance(e, (TimeoutError, transport.Silence))
            raise ConnectionLost(f"{type(e).__name__}: {e}", open_timeout_s if timed_out else None,
                                 in_handshake=isinstance(e, wsclient.HandshakeTimeout)) from None
        info = self.wire.open(self, open_timeout_s)
        self.weights_via = SHARED_MEMORY if self.segment is not None else WEBSOCKET
        return info

    def hello(self, timeout_s: float) -> dict:
        """Ask the server who it is (its shard, network, TCP): the project's own first exchange."""
        header, _ = self.request({"type": "hello"}, None, "hello_ok", timeout_s)
        if header.get("protocol") != wire.PROTOCOL_VERSION:
            self.close()
            raise RemoteError(f"protocol {header.get('protocol')} at {self.uri}, this client speaks {wire.PROTOCOL_VERSION}")
        self.info = header
        return header

    def fit(self, dataset_key: str, train_config: TrainConfig, weights: dict[str, torch.Tensor],
            timeout_s: float | None = None) -> FitResult:
        return self.wire.fit(self, dataset_key, train_config, weights, timeout_s)

    def close(self) -> None:
        self.segment = None  # unmapped once the last view of it is gone
        if self._ws is not None:
            self._ws.close()
            self._ws = None

    def live_congestion(self) -> str | None:
        """The congestion control the open connection's socket uses (None: not TCP, or not open)."""
        ws = self._ws
        return tcp.congestion_or_none(ws.sock) if ws is not None else None

    def sample_backoff(self) -> None:
        """Called by a BackoffSampler: note the socket's RTO backoff while a request is out (it is reset
        by the next valid RTT sample, so the end of a round no longer shows it)."""
        ws = self._ws
        if ws is None or not self._in_flight:
            return
        try:
            backoff = tcp.backoff(ws.sock)
        except (OSError, IndexError):
            return
        if backoff > self._max_backoff:
            self._max_backoff = backoff

    def interrupt(self) -> None:
        """Cut off a request in flight (the run is stopping): its ``fit`` raises ConnectionLost at once."""
        ws = self._ws
        if ws is not None:
            ws.shutdown()

    def _abort(self) -> None:
        """Watchdog: unblock a send or receive that has waited too long by shutting the socket down."""
        self._timed_out = True
        self.interrupt()

    def tcp_mark(self):
        """TCP_INFO now, for ``tcp_since`` at the end of a round of several exchanges."""
        if self._ws is None:
            raise ConnectionLost("not connected")
        self._max_backoff = 0
        return tcp.info_or_none(self._ws.sock)

    def tcp_since(self, before, first_byte_s: float, longest_gap_s: float) -> None:
        """``round_tcp``: what TCP did since ``tcp_mark``."""
        self.round_tcp = self._round_tcp(before, tcp.info_or_none(self._ws.sock), first_byte_s, longest_gap_s)

    def last_waits(self) -> tuple[float, float]:
        """The last exchange's wait for the reply's first byte and its longest wait for a byte within it."""
        ws = self._ws
        return (ws.first_byte_at or ws.marked_at) - ws.marked_at, ws.longest_gap_s

    def _round_tcp(self, before, after, first_byte_s: float, longest_gap_s: float) -> RoundTcp | None:
        """What TCP did between two TCP_INFO readings of this connection's socket (None: not TCP)."""
        if before is None or after is None:
            return None
        return RoundTcp(after.total_retrans - before.total_retrans,
                        None if after.total_rto is None else after.total_rto - before.total_rto,
                        max(self._max_backoff, after.backoff), after.rto_us / 1000, after.rtt_us / 1000,
                        first_byte_s, longest_gap_s)

    def exchange(self, message, what: str, timeout_s: float | None):
        """Send one message and return the reply's raw frame, under ``timeout_s`` (of silence, or for the
        whole exchange); ConnectionLost if it fails or times out."""
        if self._ws is None:
            raise ConnectionLost("not connected")
        self._timed_out = False
        ws = self._ws
        if self._silence:
            ws.sock.settimeout(timeout_s or None)
        elif timeout_s:
            if self._watchdog is None:
                self._watchdog = Watchdog(self._abort, name=f"{self.name}-watchdog")
            self._watchdog.arm(timeout_s)
        self._in_flight = True
        ws.mark()
        try:
            ws.send(message)
            return ws.recv()
        except OSError as e:  # transport.ConnectionClosed and Silence included
            out_s = time.monotonic() - ws.marked_at
            if isinstance(e, transport.Silence):
                raise ConnectionLost(f"{what}: {e} (websocket timeout)", ws.sock.gettimeout(), out_s) from None
            if self._timed_out:
                raise ConnectionLost(f"{what}: no reply within {timeout_s:g} s", None, out_s) from None
            raise ConnectionLost(f"{what}: {type(e).__name__}: {e}", None, out_s) from None
        finally:
            self._in_flight = False
            if timeout_s and not self._silence:
                self._watchdog.disarm()

    def request(self, header: dict, weights, expect: str, timeout_s: float | None, frame: list | None = None):
        """Send ``header`` (+ ``weights``), or ``frame`` if given (the same, already encoded); return the
        reply's header and weights."""
        if self._ws is None:
            raise ConnectionLost("not connected")
        ws = self._ws
        before = tcp.info_or_none(ws.sock)
        self._max_backoff = 0
        reply = self.exchange(frame or wire.encode_parts(header, weights), header["type"], timeout_s)
        self.round_tcp = self._round_tcp(before, tcp.info_or_none(ws.sock), ws.first_byte_at - ws.marked_at,
                                         ws.longest_gap_s)
        try:
            # The weights stay views of the connection's receive buffer, valid until its next request: the
            # caller combines them into the global model first (run_round), which copies what it keeps.
            reply_header, reply_weights = wire.decode(reply, copy=False)
        except wire.WireError as e:
            raise BadReply(f"{header['type']}: malformed reply: {e}") from None
        if reply_header["type"] == "error":
            raise RemoteError(f"server refused {header['type']}: {reply_header.get('message')}")
        if reply_header["type"] != expect:
            raise RemoteError(f"expected {expect}, got {reply_header['type']}")
        return reply_header, reply_weights
