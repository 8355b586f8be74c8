"""A data owner under a flood of idle connections, as an attacker on the same host would hold them: a real
client's handshake and a whole training round are still served promptly, with a bounded thread count."""

import resource
import socket
import time
from pathlib import Path

import pytest

from asyncfl.client.remote import RemoteServer
from asyncfl.core.model import initial_weights
from asyncfl.core.protocol import TrainConfig
from tests.helpers import kill_session, start_servers

N_IDLE = 3000
TOKEN = "flood-token-0123456789abcdef"


def threads_of(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


def owner_pid(servers_pid: int) -> int:
    """The one server process server/main.py forked."""
    children = Path(f"/proc/{servers_pid}/task/{servers_pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def test_three_thousand_idle_connections_do_not_lock_a_client_out(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = N_IDLE + 256
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"the open files hard limit ({hard}) is below {need}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))
    proc, uris = start_servers(tmp_path, "--n-servers", "1", "--token", TOKEN)
    idle: list[socket.socket] = []
    try:
        pid = owner_pid(proc.pid)
        host, port = uris[0].removeprefix("ws://").rsplit(":", 1)
        # Prepare: 3,000 TCP connections that never send a byte
        for _ in range(N_IDLE):
            idle.append(socket.create_connection((host, int(port)), timeout=10))
        peak_threads = threads_of(pid)
        # Execute: a real client connects and trains one round
        t = time.monotonic()
        worker = RemoteServer(uris[0], "server-0", TOKEN, shared_memory=False)
        worker.connect(timeout_s=10)
        result = worker.fit(dataset_key="mnist-5k", train_config=TrainConfig(batch_size=32),
                            weights=initial_weights(0), timeout_s=10)
        elapsed_s = time.monotonic() - t
        peak_threads = max(peak_threads, threads_of(pid))
        worker.close()
        # Assert: served within a second, threads bounded, the owner alive and still serving
        assert result.n_samples == 32
        assert elapsed_s < 1.0, f"handshake + round took {elapsed_s:.2f} s under the flood"
        assert peak_threads < 64
        assert proc.poll() is None and Path(f"/proc/{pid}").exists()
        log = (tmp_path / "servers.log").read_text()
        assert "exited" not in log
    finally:
        for s in idle:
            s.close()
        kill_session(proc)
