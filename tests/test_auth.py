"""Who may connect to a data server: the token, loopback-only binding without one, and TLS."""

import subprocess

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from asyncfl.client.remote import RemoteError, RemoteServer
from asyncfl.core.model import initial_weights
from asyncfl.core.protocol import TrainConfig
from asyncfl.net import auth
from tests.helpers import PYTHON, ROOT, kill_session, start_servers

TOKEN = "test-token-0123456789abcdef"


def test_a_connection_without_the_token_gets_no_training(tmp_path):
    # Prepare
    proc, uris = start_servers(tmp_path, "--n-servers", "1", env={"ASYNCFL_TOKEN": TOKEN})
    try:
        # Execute: strangers with no token and with a wrong one, raw and through the client's own handle.
        statuses = []
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TOKEN}):
            with pytest.raises(InvalidStatus) as refused:
                connect(uris[0], additional_headers=headers, proxy=None, open_timeout=10)
            statuses.append(refused.value.response.status_code)
        with pytest.raises(RemoteError, match="no token"):
            RemoteServer(uris[0], "stranger").connect(timeout_s=10)
        with pytest.raises(RemoteError, match="wrong token"):
            RemoteServer(uris[0], "stranger", token="x" * 20).connect(timeout_s=10)
        # Assert: all refused at the handshake; the server trained nothing, and still serves its owner.
        assert statuses == [401, 401, 401]
        owner = RemoteServer(uris[0], "owner", token=TOKEN)
        assert owner.connect(timeout_s=10)["fits"] == 0
        assert owner.fit("mnist-5k", TrainConfig(), initial_weights(0)).n_samples == 32
        owner.close()
        log = (tmp_path / "servers.log").read_text()
        assert log.count("refused a connection") == 5 and "wrong token" in log and "no token" in log
    finally:
        kill_session(proc)


def test_listening_beyond_loopback_needs_a_token():
    run = subprocess.run([PYTHON, "-m", "asyncfl.server", "--n-servers", "1", "--host", "0.0.0.0"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert run.returncode == 2 and "set a token" in run.stdout + run.stderr


@pytest.mark.parametrize("token,ok", [("", False), ("short", False), ("has a space 0123456789", False),
                                      ("0123456789abcdef", True)])
def test_token_rules(token, ok, monkeypatch):
    monkeypatch.delenv(auth.TOKEN_ENV, raising=False)
    if ok:
        assert auth.resolve_token(token) == token
    elif token:
        with pytest.raises(ValueError):
            auth.resolve_token(token)
    else:
        assert auth.resolve_token(token) is None
    monkeypatch.setenv(auth.TOKEN_ENV, "from-the-environment-123")
    assert auth.resolve_token("") == "from-the-environment-123"


@pytest.mark.parametrize("host,loopback", [("127.0.0.1", True), ("127.8.0.1", True), ("::1", True),
                                           ("localhost", True), ("0.0.0.0", False), ("", False),
                                           ("10.0.0.5", False), ("example.org", False)])
def test_is_loopback(host, loopback):
    assert auth.is_loopback(host) is loopback


def test_tls_with_a_self_signed_certificate(tmp_path):
    # Prepare: a self-signed certificate for 127.0.0.1.
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=asyncfl",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    proc, uris = start_servers(tmp_path, "--n-servers", "1", "--certfile", str(cert), "--keyfile", str(key),
                               env={"ASYNCFL_TOKEN": TOKEN})
    try:
        assert uris[0].startswith("wss://127.0.0.1:")
        # Execute / Assert: trusted through --cafile, a round trains; unverified, the client refuses.
        owner = RemoteServer(uris[0], "owner", token=TOKEN, cafile=str(cert))
        owner.connect(timeout_s=10)
        assert owner.fit("mnist-5k", TrainConfig(), initial_weights(0)).n_samples == 32
        owner.close()
        with pytest.raises(RemoteError, match="not trusted"):
            RemoteServer(uris[0], "no-ca", token=TOKEN).connect(timeout_s=10)
        with pytest.raises(RemoteError):  # plain ws:// to a TLS server never gets a hello
            RemoteServer(uris[0].replace("wss://", "ws://"), "plain", token=TOKEN).connect(timeout_s=3)
    finally:
        kill_session(proc)
