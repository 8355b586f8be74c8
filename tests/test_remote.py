"""The client's handle on a server: a round with no reply is cut off at its timeout, then reconnected."""

import threading
import time

import pytest
from websockets.sync.server import serve

from asyncfl.client.remote import ConnectionLost, RemoteError, RemoteServer
from asyncfl.core.model import initial_weights
from asyncfl.core.protocol import TrainConfig
from asyncfl.net import wire


@pytest.fixture
def silent_server():
    """Answers hello, never answers fit (as a server behind a stalled lossy link)."""

    def handler(conn):
        try:
            for frame in conn:
                header, _ = wire.decode(frame)
                if header["type"] == "hello":
                    conn.send(wire.encode({"type": "hello_ok", "protocol": wire.PROTOCOL_VERSION, "server": "silent"}))
        except Exception:
            pass

    with serve(handler, "127.0.0.1", 0, compression=None, max_size=wire.MAX_FRAME_BYTES) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield f"ws://127.0.0.1:{server.socket.getsockname()[1]}"
        server.shutdown()


def test_round_without_reply_times_out_then_reconnects(silent_server):
    # Prepare
    worker = RemoteServer(silent_server, "server-0")
    assert worker.connect(timeout_s=10)["server"] == "silent"
    # Execute
    t0 = time.monotonic()
    with pytest.raises(ConnectionLost, match="no reply within 0.5 s"):
        worker.fit(dataset_key="mnist-5k", train_config=TrainConfig(), weights=initial_weights(0), timeout_s=0.5)
    waited = time.monotonic() - t0
    # Assert: cut off at the timeout, and a new connection works.
    assert 0.5 <= waited < 5
    assert worker.reconnect(threading.Event(), open_timeout_s=5)
    assert worker.info["server"] == "silent"
    worker.close()


def test_reconnect_gives_up_when_the_run_stops():
    worker = RemoteServer("ws://127.0.0.1:1", "server-0")  # nothing listens on port 1
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    assert worker.reconnect(stop, open_timeout_s=1) is False


def test_connect_fails_with_a_clear_error():
    with pytest.raises(RemoteError, match="cannot connect"):
        RemoteServer("ws://127.0.0.1:1", "server-0").connect(timeout_s=0.3)


@pytest.fixture
def overflowing_server():
    """Answers hello, then every fit with the weights it got and a loss too large for a float (a
    malicious or broken owner, issue 40)."""

    def handler(conn):
        try:
            for frame in conn:
                header, weights = wire.decode(frame)
                if header["type"] == "hello":
                    conn.send(wire.encode({"type": "hello_ok", "protocol": wire.PROTOCOL_VERSION, "server": "big"}))
                else:
                    conn.send(wire.encode({"type": "fit_ok", "loss": 10**4000, "n_samples": 32, "compute_s": 0.01,
                                           "idle_s": 0.0}, weights))
        except Exception:
            pass

    with serve(handler, "127.0.0.1", 0, compression=None, max_size=wire.MAX_FRAME_BYTES) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield f"ws://127.0.0.1:{server.socket.getsockname()[1]}"
        server.shutdown()


def test_a_loss_beyond_a_float_is_a_bad_reply_not_a_crash(overflowing_server):
    # A BadReply is a lost round (abandoned, retried on a new connection); an OverflowError ended the run.
    from asyncfl.client.errors import BadReply

    worker = RemoteServer(overflowing_server, "server-0", shared_memory=False)
    worker.connect(timeout_s=10)
    with pytest.raises(BadReply, match="loss"):
        worker.fit(dataset_key="mnist-5k", train_config=TrainConfig(), weights=initial_weights(0), timeout_s=10)
    worker.close()
