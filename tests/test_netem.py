"""Per-server network conditions: parsing and command building (pure), then real namespaces (root)."""

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from asyncfl import netem, transport, wsclient, wsserver
from tests.helpers import (
    PYTHON,
    ROOT,
    kill_session,
    read_csv,
    run_script,
    session_pids,
    wait_for_rows,
    wait_session_gone,
)

needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("tc") is None,
                                reason="network namespaces need root and iproute2")


def mapped_semaphores(pids: list[int]) -> set[Path]:
    """The named semaphores (/dev/shm/sem.*) that these processes have open: sem_open maps the file."""
    found = set()
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        found |= {Path(line.split(None, 5)[5]) for line in maps.splitlines()
                  if len(line.split(None, 5)) == 6 and line.split(None, 5)[5].startswith("/dev/shm/sem.")}
    return found


def project_namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(netem.NETNS_PREFIX)]


# ---- pure -------------------------------------------------------------------------------------------

def test_one_loss_for_every_link_or_one_per_server():
    assert netem.parse_conditions(3, loss="10%") == [netem.LinkConditions(10.0)] * 3
    per = netem.parse_conditions(3, loss="0%", losses="0 5 20", delays_ms="0,50,0", rates_mbit="0 0 10")
    assert per == [netem.LinkConditions(0, 0, 0), netem.LinkConditions(5, 50, 0), netem.LinkConditions(20, 0, 10)]
    assert all(c.is_clean() for c in netem.parse_conditions(2))


@pytest.mark.parametrize("kwargs", [{"loss": "10%", "losses": "0 10"}, {"losses": "1 2 3"}, {"loss": "100%"},
                                    {"delays_ms": "-1 0"}, {"rates_mbit": "fast 0"}])
def test_bad_conditions_are_refused(kwargs):
    with pytest.raises(ValueError):
        netem.parse_conditions(2, **kwargs)


def test_names_fit_linux_interface_limits_and_subnets_skip_used_addresses():
    ns, host_if, ns_if = netem.link_names(4194304, 999)  # the largest pid and a large index
    assert len(host_if) <= 15 and len(ns_if) <= 15 and ns.startswith(netem.NETNS_PREFIX)
    first = netem.SUBNETS[0]
    used = set(netem.subnet_addresses(first)[:1])
    assert netem.free_subnets(used, 2) == [first + 1, first + 2]
    host, guest = netem.subnet_addresses(first + 1)
    assert host.startswith("169.254.") and int(guest.rsplit(".", 1)[1]) == int(host.rsplit(".", 1)[1]) + 1


def test_loss_rules_and_qdisc_arguments():
    assert "numgen random mod 10000 < 1250 drop" in netem.nft_loss_ruleset(12.5)
    assert netem.netem_args(netem.LinkConditions(10, 50, 100)) == [
        "delay", "50ms", "loss", "10%", "rate", "100mbit", "limit", "100000"]
    assert netem.tbf_args(10)[:2] == ["rate", "10mbit"]


# ---- real namespaces ------------------------------------------------------------------------------

@needs_root
def test_lab_builds_links_that_carry_tcp_and_removes_them():
    # Prepare: other runs' namespaces may come and go meanwhile; only this lab's are checked.
    lab, names = netem.NetworkLab(), set()
    try:
        # Execute
        links = lab.create([netem.LinkConditions(loss_pct=10), netem.LinkConditions(rate_mbit=50)])
        # Assert: both namespaces exist, conditions are in place, and TCP gets through each link.
        names = {link.netns for link in links}
        assert len(names) == 2 and names <= set(project_namespaces())
        if links[0].mechanism["loss"] == "nftables":
            tables = subprocess.run(["ip", "netns", "exec", links[0].netns, "nft", "list", "tables"],
                                    capture_output=True, text=True).stdout
            assert f"inet {netem.NFT_TABLE}" in tables
        qdiscs = subprocess.run(["tc", "qdisc", "show", "dev", links[1].host_if], capture_output=True, text=True).stdout
        assert ("tbf" in qdiscs) or ("netem" in qdiscs)
        for link in links:
            echo = subprocess.Popen(["ip", "netns", "exec", link.netns, PYTHON, "-c",
                                     "import socket,sys; s=socket.create_server((sys.argv[1], 9000)); print('up', flush=True);"
                                     "c,_=s.accept(); c.sendall(c.recv(64))", link.ns_addr],
                                    stdout=subprocess.PIPE, text=True)
            assert echo.stdout.readline().strip() == "up"
            with socket.create_connection((link.ns_addr, 9000), timeout=30) as c:
                c.sendall(b"ping")
                assert c.recv(64) == b"ping"
            echo.wait(10)
    finally:
        lab.close()
    assert not names & set(project_namespaces())


@needs_root
def test_minimum_retransmission_timeout_is_set_on_both_routes():
    lab = netem.NetworkLab()
    try:
        link = lab.create([netem.LinkConditions()], rto_min_ms=20.0)[0]
        host_side = subprocess.run(["ip", "route", "show", link.ns_addr], capture_output=True, text=True).stdout
        ns_side = subprocess.run(["ip", "netns", "exec", link.netns, "ip", "route", "show", link.host_addr],
                                 capture_output=True, text=True).stdout
        assert "rto_min lock 20ms" in host_side and "rto_min lock 20ms" in ns_side
        assert link.describe()["rto_min_ms"] == 20.0
    finally:
        lab.close()


@needs_root
def test_delay_without_netem_is_refused_not_ignored():
    lab = netem.NetworkLab()
    names = {netem.link_names(lab.owner_pid, 0)[0]}
    try:
        try:
            lab.create([netem.LinkConditions(delay_ms=50)])
        except netem.NetemError as e:
            assert "netem" in str(e)
        else:
            assert lab.links[0].mechanism == {"delay": "netem"}  # a kernel with netem emulates it
    finally:
        lab.close()
    assert not names & set(project_namespaces())


@needs_root
def test_cleanup_removes_namespaces_of_dead_owners_only():
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale, alive = netem.NetworkLab(owner_pid=dead.pid), netem.NetworkLab()
    try:
        alive.create([netem.LinkConditions()])
        stale.create([netem.LinkConditions()])  # (create() itself cleans up first: make the stale one last)
        removed = netem.cleanup_stale()
        assert stale.links[0].netns in removed
        assert stale.links[0].netns not in project_namespaces()
        assert alive.links[0].netns in project_namespaces()
    finally:
        stale.close()
        alive.close()


@needs_root
def test_lossy_link_slows_only_its_server_and_is_torn_down(tmp_path):
    run = run_script(["./train.sh", "--n-servers", "2", "--losses", "20 0", "--duration-s", "15", "--base-port", "0",
                      "--eval-interval-s", "5", "--no-profile", "--out-dir", str(tmp_path)], 180)
    assert run.returncode == 0, run.stdout + run.stderr
    config = json.loads((tmp_path / "config.json").read_text())
    lossy, clean = config["finished"]["rounds_per_server"]
    assert lossy <= clean / 2
    network = [info["network"] for info in config["server_info"]]
    assert network[0]["loss_pct"] == 20 and network[0]["mechanism"]["loss"] in ("netem", "nftables")
    assert network[1]["loss_pct"] == 0 and network[1]["netns"]
    assert config["weights_via"] == ["websocket"] * 2  # through the emulated links, never around them
    assert config["finished"]["errors"] == []
    assert not {n["netns"] for n in network} & set(project_namespaces())  # its own are gone (others may run)


@needs_root
def test_next_run_cleans_up_after_a_killed_one(tmp_path):
    # Prepare: a lossy run, killed outright with everything it started. Other runs' namespaces may come
    # and go meanwhile: only this run's (named after its servers.py) are checked.
    semaphores, ours = set(), set()
    proc = subprocess.Popen(["./train.sh", "--n-servers", "2", "--loss", "10%", "--base-port", "0",
                             "--duration-s", "120", "--out-dir", str(tmp_path / "killed")],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_rows(tmp_path / "killed" / "rounds.csv", 5, proc, timeout_s=90)
        pids = session_pids(proc.pid)
        semaphores = mapped_semaphores(pids)  # the run's own, not other processes'
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert wait_session_gone(proc.pid) == []
        ours = {n for n in project_namespaces() if int(n.split("-")[1]) in pids}
        assert len(ours) == 2  # left behind by the kill
    finally:
        kill_session(proc)
        # The kill took multiprocessing's resource tracker with it, which would have removed the named
        # semaphores of the run's queues: the test removes the ones its killed run had open.
        for path in semaphores:
            path.unlink(missing_ok=True)
    # Execute
    run = run_script(["./train.sh", "--n-servers", "2", "--loss", "10%", "--base-port", "0", "--duration-s", "3",
                      "--no-profile", "--out-dir", str(tmp_path / "next")], 120)
    # Assert
    assert run.returncode == 0, run.stdout + run.stderr
    assert not ours & set(project_namespaces())
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert netem.NFT_TABLE not in tables
    assert read_csv(tmp_path / "next" / "rounds.csv")


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to drop to nobody")
def test_without_root_conditions_stop_before_anything_starts():
    run = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", PYTHON, "-m", "asyncfl.servers",
                          "--n-servers", "2", "--loss", "10%", "--base-port", "0"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "root" in run.stdout and "READY" not in run.stdout


@needs_root
def test_the_server_ends_a_connection_whose_peer_vanished_without_a_word():
    # A client host that vanishes (no FIN or RST ever arrives) must not hold a server thread, and the
    # memory it holds, forever: the link goes down after a message, and the server's keepalive probes
    # (1 s of silence, then 2 probes 1 s apart) go unanswered.
    lab, made = netem.NetworkLab(), queue.Queue()
    servers = []
    try:
        (link,) = lab.create([netem.LinkConditions()])

        got, ended = threading.Event(), queue.Queue()

        def read_only(conn):  # sends nothing back: no unacknowledged data would hold the probes back
            try:
                while conn.recv():
                    got.set()
            except transport.ConnectionClosed as e:
                ended.put(e)

        def listen():  # a socket stays in the namespace of the thread that made it
            netem.enter_netns(link.netns)
            made.put(wsserver.Server(link.ns_addr, 0, read_only, lambda headers, peer: None, 1 << 20,
                                     keepalive=(1, 1, 2)))

        threading.Thread(target=listen).start()
        servers.append(made.get(timeout=10))
        threading.Thread(target=servers[0].serve_forever, daemon=True).start()
        conn = wsclient.connect(f"ws://{link.ns_addr}:{servers[0].socket.getsockname()[1]}", {}, None, 1 << 20, 10)
        conn.send(b"hi")  # (it acknowledges the server's handshake answer: the server has nothing in flight)
        assert got.wait(10) and servers[0].counts()["open"] == 1
        subprocess.run(["ip", "link", "set", link.host_if, "down"], check=True)
        deadline = time.monotonic() + 20
        while servers[0].counts()["open"]:
            assert time.monotonic() < deadline, "the server still holds the vanished peer's connection"
            time.sleep(0.1)
        assert "timed out" in str(ended.get(timeout=10))  # the handler saw the connection end, nothing worse
    finally:
        for server in servers:
            server.shutdown()
        lab.close()
