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

from asyncfl.net import tcp, transport, wsclient, wsserver
from asyncfl.netem import lab as netem
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


def netdev_tables() -> set[str]:
    out = subprocess.run(["nft", "list", "tables", "netdev"], capture_output=True, text=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.startswith("table netdev ")}


def project_namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(netem.NETNS_PREFIX)]


# ---- pure -------------------------------------------------------------------------------------------

def test_names_fit_linux_interface_limits_and_subnets_skip_used_addresses():
    ns, host_if, ns_if = netem.link_names(4194304, 999)  # the largest pid and a large index
    assert len(host_if) <= 15 and len(ns_if) <= 15 and ns.startswith(netem.NETNS_PREFIX)
    first = netem.SUBNETS[0]
    used = set(netem.subnet_addresses(first)[:1])
    assert netem.free_subnets(used, 2) == [first + 1, first + 2]
    host, guest = netem.subnet_addresses(first + 1)
    assert host.startswith("169.254.") and int(guest.rsplit(".", 1)[1]) == int(host.rsplit(".", 1)[1]) + 1


def test_loss_rules_and_qdisc_arguments():
    ingress = netem.nft_ingress_ruleset("asyncfl_1_0", "afl1h0", 12.5)
    assert "table netdev asyncfl_1_0" in ingress and 'hook ingress device "afl1h0"' in ingress
    assert "meta protocol ip numgen random mod 10000 < 1250 counter drop" in ingress
    assert "hook output" in netem.nft_local_ruleset(12.5)  # the old placement, for bench/loss.py
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
    assert network[0]["loss_pct"] == 20 and network[0]["mechanism"]["loss"] in ("netem", "nftables netdev ingress (both ends)")
    assert network[1]["loss_pct"] == 0 and network[1]["netns"]
    assert config["weights_via"] == ["websocket"] * 2  # through the emulated links, never around them
    assert config["finished"]["errors"] == []
    assert not {n["netns"] for n in network} & set(project_namespaces())  # its own are gone (others may run)


@needs_root
def test_next_run_cleans_up_after_a_killed_one(tmp_path):
    # Prepare: a lossy run, killed outright with everything it started. Other runs' namespaces may come
    # and go meanwhile: only this run's (named after its server/main.py) are checked.
    semaphores, ours, our_tables = set(), set(), set()
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
        assert len(ours) == 2  # left behind by the kill, with their tables on this side
        our_tables = {t for t in netdev_tables() if (m := netem.HOST_TABLE.fullmatch(t)) and int(m.group(1)) in pids}
        assert len(our_tables) == 2
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
    assert not our_tables & netdev_tables()  # (other runs' tables may be there meanwhile)
    assert read_csv(tmp_path / "next" / "rounds.csv")


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to drop to nobody")
def test_without_root_conditions_stop_before_anything_starts():
    run = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", PYTHON, "-m", "asyncfl.server",
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


# ---- the paper's loss: silent, two-way, on the paper's TCP ----------------------------------------

def exchange_over(link: netem.Link, n_exchanges: int, size: int, cc: str = "cubic") -> tuple:
    """A project server in the link's namespace answering each message with ``size`` bytes, and a client
    in this namespace: (client's TCP_INFO, server's TCP_INFO) at the end, each read from the live socket."""
    made, server_info = queue.Queue(), queue.Queue()
    reply = bytes(size)

    def echo(conn):
        try:
            for _ in range(n_exchanges):
                conn.recv()
                conn.send(reply)
            conn.recv()  # the client's last word: its TCP_INFO has been read, now ours
        except transport.ConnectionClosed:
            pass
        server_info.put((tcp.read_info(conn.sock), tcp.congestion(conn.sock)))

    def listen():
        netem.enter_netns(link.netns)  # (this thread only: its socket stays in the namespace)
        made.put(wsserver.Server(link.ns_addr, 0, echo, lambda headers, peer: None, 4 * size, tcp_cc=cc))

    threading.Thread(target=listen).start()
    server = made.get(timeout=10)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        conn = wsclient.connect(f"ws://{link.ns_addr}:{server.socket.getsockname()[1]}", {}, None, 4 * size, 30, cc)
        # On a machine busy beside a sweep the veth's packets wait for ksoftirqd, RTT samples take seconds
        # and so does the RTO (seen: 4.8-9.7 s at a 20 ms minimum): a lost packet can then cost many.
        conn.sock.settimeout(150)
        for _ in range(n_exchanges):
            conn.send(bytes(size))
            assert len(conn.recv()) == size
        client = tcp.read_info(conn.sock), tcp.congestion(conn.sock)
        conn.send(b"done")
        return client, server_info.get(timeout=150)
    finally:
        server.shutdown()


@needs_root
@pytest.mark.parametrize("drop_at", ["ingress", "local"])
def test_loss_is_silent_and_two_way_at_ingress_and_not_at_the_senders_own_hooks(drop_at):
    # Prepare: one link at 10% with a 20 ms minimum RTO (the paper regime's at K=10), so a few 1 MB
    # exchanges take seconds. (At 20% both ways a retransmission or its ACK is lost 36% of the time, and
    # now and then the doubling RTO stalls an exchange for minutes: the paper's flat stretches, not a bug.)
    lab = netem.NetworkLab(drop_at=drop_at)
    try:
        (link,) = lab.create([netem.LinkConditions(loss_pct=10)], rto_min_ms=20)
        # Execute
        (client, client_cc), (server, server_cc) = exchange_over(link, 3, 1_000_000)
        dropped = lab.dropped()[0]
    finally:
        lab.close()
    # Assert: both directions lose packets; what each end sees depends on where the drops are.
    assert client_cc == server_cc == "cubic"
    assert dropped["to_server"] > 0 and dropped["to_client"] > 0
    assert client.total_retrans > 0
    assert server.rcv_ooopack > 0  # the client's packets go missing on the way: holes at the server
    if drop_at == "ingress":  # ... and the server's on the way to the client, as on a wire: it retransmits
        assert client.rcv_ooopack > 0 and server.total_retrans > 0
    else:  # the old placement: a reply packet dropped inside its sender is sent again, before the next one
        assert client.rcv_ooopack == 0


@needs_root
def test_without_loss_nothing_is_dropped_and_no_hole_is_seen():
    lab = netem.NetworkLab()
    try:
        (link,) = lab.create([netem.LinkConditions()], rto_min_ms=20)
        (client, _), (server, _) = exchange_over(link, 3, 1_000_000)
        assert lab.dropped() == [{"to_client": 0, "to_server": 0}]
        tables = subprocess.run(["nft", "list", "tables", "netdev"], capture_output=True, text=True).stdout
        assert f"asyncfl_{lab.owner_pid}_0" not in tables  # no rule at all
    finally:
        lab.close()
    assert client.rcv_ooopack == 0 and server.rcv_ooopack == 0


@needs_root
def test_the_callers_side_tables_go_with_the_lab_or_with_its_dead_owner():
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale, live = netem.NetworkLab(owner_pid=dead.pid), netem.NetworkLab()

    try:
        live.create([netem.LinkConditions(loss_pct=5)])
        stale.create([netem.LinkConditions(loss_pct=5)])
        assert f"asyncfl_{dead.pid}_0" in netdev_tables() and f"asyncfl_{live.owner_pid}_0" in netdev_tables()
        assert f"asyncfl_{dead.pid}_0" in netem.cleanup_stale()
        assert f"asyncfl_{dead.pid}_0" not in netdev_tables()
        assert f"asyncfl_{live.owner_pid}_0" in netdev_tables()  # a live run's are left alone
        live.close()
        assert f"asyncfl_{live.owner_pid}_0" not in netdev_tables()
    finally:
        stale.close()
        live.close()


def live_congestion(netns: str | None, address: str) -> set[str]:
    """Congestion controls of the established TCP sockets to or from ``address``, as ``ss -ti`` shows them."""
    cmd = (["ip", "netns", "exec", netns] if netns else []) + ["ss", "-tinH", "state", "established"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
    found, take = set(), False
    for line in out.splitlines():
        if not line.startswith((" ", "\t")):  # "... 169.254.0.2:8777 169.254.0.1:40000": whole addresses
            take = any(word.rsplit(":", 1)[0] == address for word in line.split())  # (not .22's, a sweep's)
        elif take:
            found |= {w for w in line.split() if w in tcp.available()}
    return found


@needs_root
@pytest.mark.parametrize("cc", ["cubic", "bbr"])
def test_tcp_cc_is_what_both_ends_live_sockets_use_and_what_config_records(tmp_path, cc):
    if cc not in tcp.available():
        pytest.skip(f"this kernel has no {cc}")
    proc = subprocess.Popen(["./train.sh", "--n-servers", "1", "--netns", "always", "--no-shared-memory", "--tcp-cc", cc,
                             "--base-port", "0", "--duration-s", "60", "--no-profile", "--out-dir", str(tmp_path)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_rows(tmp_path / "rounds.csv", 5, proc, timeout_s=90)
        config = json.loads((tmp_path / "config.json").read_text())
        network = config["server_info"][0]["network"]
        # Execute: the live sockets, seen from outside the run
        client_side = live_congestion(None, network["address"])
        server_side = live_congestion(network["netns"], network["address"])
    finally:
        kill_session(proc)
    # Assert
    assert client_side == {cc} and server_side == {cc}
    assert config["tcp"]["cc"] == cc and config["tcp"]["client_cc"] == [cc] and config["tcp"]["server_cc"] == [cc]
    assert config["tcp"]["client_sysctl"]["tcp_sack"] and config["tcp"]["server_sysctl"][0]["tcp_frto"]


def test_an_unknown_congestion_control_stops_before_anything_starts(tmp_path):
    run = run_script(["./train.sh", "--tcp-cc", "nosuch", "--out-dir", str(tmp_path / "run")], 60)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "--tcp-cc" in run.stderr and "nosuch" in run.stderr
    assert not (tmp_path / "run").exists()  # nothing started, nothing written


@needs_root
def test_a_lossy_run_records_its_stalls_and_the_analysis_reports_them(tmp_path):
    # 10% and a silence of 3 s (four doublings of the 200 ms minimum RTO): rounds that met an RTO still
    # finish, and enough of them to count some, on a machine busy with a sweep beside.
    run = run_script(["./train.sh", "--n-servers", "2", "--losses", "10 0", "--duration-s", "20", "--base-port", "0",
                      "--round-timeout-s", "3", "--timeout-on", "silence", "--eval-interval-s", "5", "--no-profile",
                      "--out-dir", str(tmp_path / "run")], 180)
    assert run.returncode == 0, run.stdout + run.stderr
    rows = read_csv(tmp_path / "run" / "rounds.csv")
    lossy, clean = ([r for r in rows if r["server"] == s] for s in ("0", "1"))
    assert lossy and clean
    assert sum(int(r["retrans_segs"]) for r in lossy) > 0 and sum(int(r["rtos"]) for r in lossy) > 0
    assert all(float(r["rto_ms"]) > 0 and float(r["srtt_ms"]) > 0 and float(r["stall_s"]) >= 0 for r in rows)
    assert max(float(r["stall_s"]) for r in lossy) > max(float(r["stall_s"]) for r in clean)
    events = read_csv(tmp_path / "run" / "events.csv")
    timeouts = [e for e in events if e["event"] == "round_abandoned" and e["silence_s"]]
    assert all(float(e["silence_s"]) == 3 and float(e["round_s"]) >= 3 for e in timeouts)
    analysis = run_script([PYTHON, "-m", "asyncfl.analysis.analyze", str(tmp_path / "run")], 120)
    assert analysis.returncode == 0, analysis.stderr
    assert "stall_p99_s" in analysis.stdout
    (runs,) = read_csv(tmp_path / "run" / "runs.csv")
    assert float(runs["stall_max_s"]) == max(float(r["stall_s"]) for r in rows)
    assert int(runs["timeouts"]) == len(timeouts)
