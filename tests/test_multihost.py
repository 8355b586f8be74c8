"""Data owners on other machines: each one started standalone inside a network namespace this test
creates (standing in for another host), reached by its address with a token; and a client that refuses a
server speaking another protocol version or running another model."""

import json
import os
import shutil
import subprocess
import threading
import time

import pytest
from websockets.sync.server import serve

from asyncfl.client.remote import RemoteError, RemoteServer
from asyncfl.core import data
from asyncfl.core.conditions import Links
from asyncfl.core.model import architecture_signature
from asyncfl.core.split import SplitSettings, make_split
from asyncfl.net import wire
from asyncfl.netem import lab as netem
from tests.helpers import PYTHON, ROOT, kill_session, read_csv, run_script

TOKEN = "multi-host-token-0123456789"
needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                reason="network namespaces need root and iproute2")


@needs_root
def test_a_run_against_data_owners_on_other_hosts(tmp_path):
    # Prepare: two "hosts" (namespaces), each running one data owner of the same split on the same port.
    lab = netem.NetworkLab()
    owners = []
    try:
        links = lab.create(Links.parse(2).per_server)
        for i, link in enumerate(links):
            ready = tmp_path / f"owner-{i}.ready"
            log = open(tmp_path / f"owner-{i}.log", "w")
            owners.append(subprocess.Popen(
                ["ip", "netns", "exec", link.netns, PYTHON, "-m", "asyncfl.server", "--server-id", str(i), "--n-servers", "2",
                 "--stdev", "10000", "--host", link.ns_addr, "--port", "8777", "--ready-file", str(ready)],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "ASYNCFL_TOKEN": TOKEN}))
            log.close()
        for i in range(2):
            deadline = time.monotonic() + 60
            while not (tmp_path / f"owner-{i}.ready").exists():
                assert owners[i].poll() is None and time.monotonic() < deadline, (tmp_path / f"owner-{i}.log").read_text()
                time.sleep(0.05)
        addresses = ",".join((tmp_path / f"owner-{i}.ready").read_text().strip() for i in range(2))
        assert addresses == f"ws://{links[0].ns_addr}:8777,ws://{links[1].ns_addr}:8777"
        # Execute: the model owner, on this "host", through train.sh with a --servers list.
        out = tmp_path / "run"
        run = subprocess.run(["./train.sh", "--servers", addresses, "--duration-s", "8", "--eval-interval-s", "2",
                              "--profiler", "yappi", "--out-dir", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=180,
                             env={**os.environ, "ASYNCFL_TOKEN": TOKEN})
        # Assert: the same run files as a local run (servers.log belongs to local servers), the addresses
        # recorded and never the token, and each owner holding the shard a local split gives it.
        assert run.returncode == 0, run.stdout + run.stderr
        files = {"config.json", "rounds.csv", "events.csv", "f1_time.csv", "f1_epoch.csv", "yappi.csv", "client.log",
                 "model.safetensors"}
        assert files <= {p.name for p in out.iterdir()}
        config_text = (out / "config.json").read_text()
        assert TOKEN not in config_text and TOKEN not in (out / "client.log").read_text()
        config = json.loads(config_text)
        assert config["servers"] == addresses.split(",") and config["security"]["token"] is True
        assert config["finished"]["stop_reason"] == "duration" and config["finished"]["errors"] == []
        assert {r["server"] for r in read_csv(out / "rounds.csv")} == {"0", "1"}
        # the paper's profiler (--profiler yappi) finds the round loop's functions in both threads
        assert all(float(r["fit_total_s"]) > 0 and float(r["loop_total_s"]) >= float(r["fit_total_s"])
                   for r in read_csv(out / "yappi.csv"))
        ds = data.load("mnist-5k", str(ROOT / "data"))
        _, local = make_split(SplitSettings(n_servers=2, stdev=10000), ds.train_labels, 10, ds.name, ds.source)
        assert [info["class_counts"] for info in config["server_info"]] == local["fingerprints"]["class_counts"]
        assert [info["shard_fingerprint"]["sha256"] for info in config["server_info"]] == \
            local["fingerprints"]["index_sha256"]
        assert float(read_csv(out / "f1_time.csv")[-1]["f1"]) > 0.5
    finally:
        for p in owners:
            kill_session(p)
        for p in owners:
            p.wait()
        lab.close()


def fake_server(hello: dict):
    """A websocket server that answers hello with ``hello`` (another version of this project)."""
    def handler(conn):
        for _ in conn:
            conn.send(wire.encode(hello))

    server = serve(handler, "127.0.0.1", 0, compression=None, ping_interval=None)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"ws://127.0.0.1:{server.socket.getsockname()[1]}"


def test_a_server_speaking_another_protocol_version_is_refused():
    server, uri = fake_server({"type": "hello_ok", "protocol": wire.PROTOCOL_VERSION + 1})
    try:
        with pytest.raises(RemoteError, match=f"protocol {wire.PROTOCOL_VERSION + 1} at .* speaks {wire.PROTOCOL_VERSION}"):
            RemoteServer(uri, "server-0").connect(timeout_s=5)
        run = run_script([PYTHON, "-m", "asyncfl.client", "--servers", uri, "--duration-s", "5", "--no-live"], 60)
        assert run.returncode == 2 and "this client speaks" in run.stdout + run.stderr
    finally:
        server.shutdown()


def test_a_server_running_another_model_is_refused(tmp_path):
    server, uri = fake_server({"type": "hello_ok", "protocol": wire.PROTOCOL_VERSION, "server": "server-0",
                               "dataset_key": "mnist-5k", "architecture": "0" * 16})
    try:
        assert architecture_signature() != "0" * 16
        run = run_script([PYTHON, "-m", "asyncfl.client", "--servers", uri, "--duration-s", "5", "--no-live",
                          "--out-dir", str(tmp_path / "run")], 60)
        assert run.returncode == 2 and "different model architecture" in run.stdout + run.stderr
        assert not (tmp_path / "run").exists()  # refused before anything was written
    finally:
        server.shutdown()
