"""The WebSocket layer as a peer on the wire sees it: hand-made frames against a connection (the library's
parser behind the project's glue), and hand-made handshakes, idle sockets and floods against the
handshake loop of wsserver.Server."""

import gc
import os
import random
import socket
import struct
import threading
import time
import weakref
from http import HTTPStatus

import pytest
from websockets.server import ServerProtocol

from asyncfl.net import bigframes, transport, wsserver
from asyncfl.net.auth import Refusal
from asyncfl.net.transport import Connection, ConnectionClosed
from asyncfl.net.wsclient import HandshakeRefused, connect

BINARY, TEXT, CONT, CLOSE, PING, PONG = 0x2, 0x1, 0x0, 0x8, 0x9, 0xA
DEADLINE_S = 10.0
TOKEN = "t" * 32


def frame(opcode: int, payload: bytes = b"", fin: bool = True, mask: bool = True, rsv: int = 0,
          length: int | None = None) -> bytes:
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 1 << 16:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if mask:
        key = os.urandom(4)
        head += key
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + payload


def read_frame(sock: socket.socket) -> tuple[int, bool, bytes]:
    """(opcode, masked, payload) of the next frame the connection under test sent."""
    def exact(n):
        out = b""
        while len(out) < n:
            chunk = sock.recv(n - len(out))
            assert chunk, "closed before a whole frame"
            out += chunk
        return out
    b0, b1 = exact(2)
    n = b1 & 0x7F
    n = struct.unpack("!H", exact(2))[0] if n == 126 else struct.unpack("!Q", exact(8))[0] if n == 127 else n
    key = exact(4) if b1 & 0x80 else None
    payload = exact(n)
    if key:
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return b0 & 0x0F, bool(key), payload


def server_side(max_size: int = 1024) -> tuple[Connection, socket.socket]:
    a, b = socket.socketpair()
    a.settimeout(DEADLINE_S)
    b.settimeout(DEADLINE_S)
    return Connection.open(a, is_client=False, max_size=max_size), b


def closed_with(peer: socket.socket) -> int:
    opcode, _, payload = read_frame(peer)
    assert opcode == CLOSE
    return struct.unpack("!H", payload[:2])[0]


# ---- frames ---------------------------------------------------------------------------------------------

def test_a_fragmented_message_with_a_ping_between_its_fragments_is_whole_and_the_ping_answered():
    conn, peer = server_side()
    peer.sendall(frame(BINARY, b"ab", fin=False) + frame(PING, b"hi") + frame(CONT, b"cd", fin=False)
                 + frame(CONT, b"ef"))
    assert bytes(conn.recv()) == b"abcdef"
    assert read_frame(peer) == (PONG, False, b"hi")


def test_text_is_returned_as_str_and_text_that_is_not_utf8_closes_with_1007():
    conn, peer = server_side()
    peer.sendall(frame(TEXT, "héllo".encode()) + frame(TEXT, b"\xff\xfe"))
    assert conn.recv() == "héllo"
    with pytest.raises(ConnectionClosed) as e:
        conn.recv()
    assert e.value.code == 1007 and closed_with(peer) == 1007


def test_a_close_from_the_peer_is_answered_and_ends_the_connection():
    conn, peer = server_side()
    peer.sendall(frame(CLOSE, struct.pack("!H", 1001)))
    with pytest.raises(ConnectionClosed) as e:
        conn.recv()
    assert e.value.code == 1001 and closed_with(peer) == 1001 and conn.closed


@pytest.mark.parametrize("bad, why", [
    (frame(BINARY, b"x", rsv=0x40), "reserved bit"),
    (frame(BINARY, b"x", mask=False), "client frame not masked"),
    (frame(CONT, b"x"), "continuation without a message"),
    (frame(PING, b"p" * 126), "control frame too long"),
    (frame(PING, b"p", fin=False), "fragmented control frame"),
    (frame(0x3, b"x"), "reserved opcode"),
    (frame(BINARY, b"a", fin=False) + frame(BINARY, b"b"), "new message inside a fragmented one"),
])
def test_protocol_errors_close_with_1002(bad, why):
    conn, peer = server_side()
    peer.sendall(bad)
    with pytest.raises(ConnectionClosed) as e:
        conn.recv()
    assert e.value.code == 1002, why
    assert closed_with(peer) == 1002


def test_a_64_bit_length_beyond_max_size_is_refused_before_any_payload_is_sent():
    conn, peer = server_side(max_size=1024)
    peer.sendall(frame(BINARY, length=1 << 40))  # the header alone: 2 + 8 + 4 bytes, no payload
    with pytest.raises(ConnectionClosed) as e:
        conn.recv()
    assert e.value.code == 1009 and closed_with(peer) == 1009


def test_fragments_adding_up_beyond_max_size_close_with_1009():
    conn, peer = server_side(max_size=1024)
    peer.sendall(frame(BINARY, b"a" * 600, fin=False) + frame(CONT, b"b" * 600))
    with pytest.raises(ConnectionClosed) as e:
        conn.recv()
    assert e.value.code == 1009


def test_the_peer_vanishing_mid_frame_ends_the_connection():
    conn, peer = server_side()
    peer.sendall(frame(BINARY, b"x" * 100)[:50])
    peer.close()
    with pytest.raises(ConnectionClosed, match="closed"):
        conn.recv()


def test_a_client_masks_what_it_sends_and_refuses_masked_frames_from_a_server():
    a, b = socket.socketpair()
    b.settimeout(DEADLINE_S)
    conn = Connection.open(a, is_client=True, max_size=1 << 20)
    conn.send([b"ab", memoryview(b"cd")])  # a list of buffers is one message
    assert read_frame(b) == (BINARY, True, b"abcd")
    b.sendall(frame(BINARY, b"x", mask=True))
    with pytest.raises(ConnectionClosed) as e:
        conn.recv()
    assert e.value.code == 1002


def send_in_pieces(sock: socket.socket, data: bytes, seed: int, then_close: bool = False) -> threading.Thread:
    """Send ``data`` in writes of 1 byte to 100 KB from a thread (the reader must drain the socket)."""
    rng = random.Random(seed)

    def run():
        i = 0
        while i < len(data):
            k = rng.choice([1, 7, 1000, 65_535, 65_536, 100_000])
            sock.sendall(data[i:i + k])
            i += k
        if then_close:
            sock.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_large_payloads_in_any_pieces_are_whole_and_in_order_with_frames_around_them(seed):
    # From 64 KiB a payload goes straight into a buffer of its size (bigframes): header, mask and order
    # are still the library's; a ping inside a fragmented message is still answered.
    conn, peer = server_side(max_size=4 << 20)
    big = [os.urandom(n) for n in (70_000, 1_700_000, 65_536)]
    t = send_in_pieces(peer, frame(BINARY, big[0], fin=False) + frame(PING, b"p") + frame(CONT, big[1])
                       + frame(BINARY, b"small") + frame(BINARY, big[2]), seed)
    assert bytes(conn.recv()) == big[0] + big[1]
    assert bytes(conn.recv()) == b"small"
    assert bytes(conn.recv()) == big[2]
    t.join(DEADLINE_S)
    assert read_frame(peer) == (PONG, False, b"p")


def test_a_client_receives_a_large_payload_into_a_writable_buffer_and_sends_one_masked():
    a, b = socket.socketpair()
    b.settimeout(DEADLINE_S)
    conn = Connection.open(a, is_client=True, max_size=4 << 20)
    payload = os.urandom(200_000)
    t = send_in_pieces(b, frame(BINARY, payload, mask=False), seed=3)
    got = conn.recv()
    t.join(DEADLINE_S)
    assert got == payload and isinstance(got, bytearray)  # writable: wire.decode need not copy it
    conn.send([payload[:100], memoryview(payload)[100:]])
    assert read_frame(b) == (BINARY, True, payload)


def test_the_peer_vanishing_in_a_large_payload_ends_the_connection():
    conn, peer = server_side(max_size=4 << 20)
    t = send_in_pieces(peer, frame(BINARY, os.urandom(1 << 20))[:300_000], seed=5, then_close=True)
    with pytest.raises(ConnectionClosed, match="closed"):
        conn.recv()
    t.join(DEADLINE_S)


def test_a_peer_in_its_handshake_cannot_make_the_server_allocate_a_payload_buffer():
    # An 8 MiB header sent before the token is checked: buffered as the bytes come (none), no 8 MiB buffer.
    protocol = bigframes.install(ServerProtocol(max_size=8 << 20))
    protocol.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                          + frame(BINARY, length=8 << 20))
    assert protocol.events_received() and protocol.reader.sink is None
    conn = Connection(socket.socketpair()[0], protocol)  # accepted: the next payload gets its buffer
    assert conn.protocol.reader.armed
    protocol.receive_data(os.urandom(10))
    assert protocol.reader.sink is None  # (the frame begun before is finished the library's way)


# ---- the handshake loop ---------------------------------------------------------------------------------

def echo(conn: Connection) -> None:
    try:
        while True:
            conn.send(conn.recv())
    except ConnectionClosed:
        pass


def token_check(headers, peer):
    if headers.get("Authorization") == f"Bearer {TOKEN}":
        return None
    return Refusal(HTTPStatus.UNAUTHORIZED, "a valid token is required\n")


class Running:
    def __init__(self, **kwargs):
        self.errors, self.fatal = [], []
        self.handled = 0

        def handler(conn):
            self.handled += 1
            echo(conn)

        self.server = wsserver.Server("127.0.0.1", 0, handler, token_check, 1 << 20, name="t",
                                      on_error=self.errors.append, on_fatal=self.fatal.append, **kwargs)
        self.port = self.server.socket.getsockname()[1]
        self.uri = f"ws://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def connect(self, token: str = TOKEN) -> Connection:
        return connect(self.uri, {"Authorization": f"Bearer {token}"}, None, 1 << 20, DEADLINE_S)

    def raw(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=DEADLINE_S)
        return s

    def wait_for(self, condition) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while not condition():
            assert time.monotonic() < deadline, f"timed out; counts {self.server.counts()}"
            time.sleep(0.01)

    def stop(self):
        self.server.shutdown()
        self.thread.join(DEADLINE_S)
        assert not self.thread.is_alive()


@pytest.fixture
def running():
    servers = []

    def start(**kwargs):
        servers.append(Running(**kwargs))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


def http_answer(sock: socket.socket, request: bytes) -> bytes:
    sock.sendall(request)
    out = b""
    while chunk := sock.recv(4096):
        out += chunk
    return out


def test_a_handshake_without_the_token_gets_401_and_no_handler(running):
    srv = running()
    with pytest.raises(HandshakeRefused) as e:
        srv.connect(token="x" * 32)
    assert e.value.status == 401 and srv.handled == 0
    conn = srv.connect()
    conn.send(b"ping")
    assert bytes(conn.recv()) == b"ping" and srv.handled == 1


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
     b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n", b"400"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n\r\n", b"426"),
    (b"\x16\x03\x01 not http at all\r\n\r\n", b""),
    (b"GET / HTTP/1.1\r\n" + b"X-Filler: " + b"a" * 9000 + b"\r\n\r\n", b"431"),
])
def test_malformed_upgrades_are_answered_and_closed(running, request_bytes, status):
    srv = running()
    answer = http_answer(srv.raw(), request_bytes)
    assert answer.split(b" ")[1:2] == ([status] if status else [])
    assert srv.handled == 0


def test_an_idle_socket_is_closed_when_its_handshake_deadline_passes(running):
    srv = running(open_timeout_s=0.3)
    sock = srv.raw()
    t = time.monotonic()
    assert sock.recv(1) == b""
    assert 0.25 <= time.monotonic() - t < 3.0


def test_beyond_the_pending_cap_the_oldest_idle_are_closed_and_a_real_client_still_gets_in(running):
    srv = running(max_pending=8)
    idle = [srv.raw() for _ in range(50)]
    srv.wait_for(lambda: srv.server.evicted >= 42)
    assert srv.server.counts()["pending"] <= 8
    t = time.monotonic()
    conn = srv.connect()
    conn.send(b"x")
    assert bytes(conn.recv()) == b"x" and time.monotonic() - t < 1.0
    for s in idle[:42]:  # the first ones were closed
        assert s.recv(1) == b""


def test_beyond_the_per_token_cap_the_connection_idle_longest_is_cut(running):
    srv = running(max_per_token=2)
    first, second = srv.connect(), srv.connect()
    second.send(b"2")
    assert bytes(second.recv()) == b"2"
    third = srv.connect()
    with pytest.raises(ConnectionClosed):
        first.send(b"1")
        first.recv()
    for conn in (second, third):
        conn.send(b"ok")
        assert bytes(conn.recv()) == b"ok"
    assert srv.server.counts()["open"] == 2


def test_no_thread_for_a_connection_refuses_it_and_the_door_stays_open(running, monkeypatch):
    srv = running()
    real = threading.Thread
    failures = []

    class Shim:
        Lock = threading.Lock

        @staticmethod
        def Thread(*args, **kwargs):
            if not failures:
                failures.append(1)
                raise RuntimeError("can't start new thread")
            return real(*args, **kwargs)

    monkeypatch.setattr(wsserver, "threading", Shim)
    with pytest.raises(ConnectionClosed, match="handshake"):  # closed without the 101
        srv.connect()
    conn = srv.connect()
    conn.send(b"x")
    assert bytes(conn.recv()) == b"x"
    assert srv.server.errors == 1 and any("no thread" in e for e in srv.errors)


def test_a_listening_socket_that_cannot_accept_any_more_ends_the_loop_through_on_fatal(running):
    srv = running()
    real = srv.server.socket

    class Broken:  # the listening socket as it behaves once its descriptor is gone
        def fileno(self):
            return real.fileno()

        def accept(self):
            raise OSError(9, "Bad file descriptor")

        def close(self):
            real.close()

    srv.server.socket = Broken()
    socket.create_connection(("127.0.0.1", srv.port), timeout=DEADLINE_S)
    srv.thread.join(DEADLINE_S)
    assert not srv.thread.is_alive() and srv.fatal and "cannot accept" in srv.fatal[0]


def test_a_large_frame_sent_along_with_the_handshake_reaches_the_handler_whole(running):
    srv = running()
    payload = os.urandom(300_000)
    sock = srv.raw()
    request = (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
               b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n")
    t = send_in_pieces(sock, request + frame(BINARY, payload), seed=4)
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(1)
        assert chunk, "closed during the handshake"
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 101")
    t.join(DEADLINE_S)
    assert read_frame(sock) == (BINARY, False, payload)


def test_a_connection_cut_mid_payload_frees_its_buffer_with_its_last_reference():
    # A round abandoned mid-reply leaves a payload buffer of the model's size in the library's parser,
    # a generator that refers to its protocol: unless the connection breaks that cycle when it closes,
    # the buffer waits for a full garbage collection (in a soak at L=20%: +70 MiB over 38 abandons).
    a, b = socket.socketpair()
    try:
        conn = transport.Connection.open(a, is_client=True, max_size=1 << 24)
        b.sendall(struct.pack("!BBQ", 0x82, 127, 2_000_000) + bytes(100_000))  # a 2 MB frame, cut short
        a.settimeout(0.2)
        with pytest.raises(transport.Silence):
            conn.recv()
        protocol = weakref.ref(conn.protocol)
        gc.disable()  # only reference counting may free it
        try:
            conn.close_socket()
            del conn
            assert protocol() is None
        finally:
            gc.enable()
    finally:
        b.close()


def slow_reader(sock: socket.socket, chunk: int, pause_s: float, stop_after: int | None, got: list) -> threading.Thread:
    """Reads ``chunk`` bytes every ``pause_s`` (a lossy link's slow but moving upload), until ``stop_after``
    bytes (then nothing more: a link that stalls) or the end."""
    def run():
        total = 0
        while stop_after is None or total < stop_after:
            data = sock.recv(chunk)
            if not data:
                break
            total += len(data)
            time.sleep(pause_s)
        got.append(total)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("kind", ["text", "binary"])
def test_a_slow_upload_that_keeps_moving_outlasts_the_timeout_and_a_stalled_one_does_not(kind):
    # The original client's timeout is per send (websocket-client 0.57's send_frame loop): a 2 MB message
    # that takes ~1 s to drain in 32 KB steps every 20 ms must go through a 0.4 s timeout of silence.
    size = 2 * 1024 * 1024
    message = "a" * size if kind == "text" else [bytes(size)]
    for stall in (False, True):
        a, b = socket.socketpair()
        for s in (a, b):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        a.settimeout(0.4)
        got: list = []
        reader = slow_reader(b, 32 * 1024, 0.02, size // 4 if stall else None, got)
        conn = Connection.open(a, is_client=True, max_size=4 * size)
        started = time.monotonic()
        if stall:  # the link stops taking bytes: 0.4 s of silence ends it
            with pytest.raises(transport.Silence):
                conn.send(message)
        else:
            conn.send(message)
            assert time.monotonic() - started > 0.4  # longer in all than the timeout, never silent that long
        a.close()
        b.close()
        reader.join(DEADLINE_S)
