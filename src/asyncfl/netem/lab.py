"""Per-server network conditions on real TCP: one network namespace and veth link per data server.

The study applied ``tc netem`` loss to the whole loopback device (its L). Here every data server runs in
a network namespace of its own, joined to the root namespace by a veth pair with link-local addresses
(169.254.0.0/16, which no real network routes), so loss, delay and rate apply to that server's link only
and nothing else on the machine is touched:

    root namespace: client ── aflPIDhI 169.254.a.b+1 ══ veth ══ aflPIDnI 169.254.a.b+2 ── server I
                                                                (namespace asyncfl-PID-I)

Mechanisms, per link and in both directions:
- ``tc netem`` (loss, delay, rate) on both veth ends where the kernel has it;
- otherwise loss by an nftables ``numgen random`` drop rule on the ``netdev`` ingress hook of both veth
  ends (a table in the namespace, gone with it, and one in the calling namespace, removed by ``close``):
  a packet is dropped on arrival, after its sender's TCP has sent it, so like netem's loss on the paper's
  loopback the sender learns of it only from a missing ACK (data, ACKs, SYN and FIN alike). Rate is a
  ``tbf`` qdisc on both ends; a delay cannot be emulated without netem, and asking for one stops with a
  message instead of being ignored.

The veth ends get loopback's MTU (65535), so a 1.7 MB model is about as many packets as on the paper's
loopback and the same loss rate hurts about as much. Needs CAP_NET_ADMIN (root, or the user namespaces
of rootless.py), ``ip`` and ``tc`` (and ``nft`` for loss without netem). Namespaces are named after the owning process, so a later run removes those whose owner
died (``python -m asyncfl.netem --cleanup`` does only that).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from asyncfl.core.conditions import LinkConditions

NETNS_PREFIX = "asyncfl-"
NFT_TABLE = "asyncfl"  # inside a server's namespace
HOST_TABLE = re.compile(r"asyncfl_(\d+)_\d+")  # a link's table in the calling namespace: asyncfl_<owner pid>_<index>
DROP_AT = ("ingress", "local")  # where packets are dropped; "local" (the sender's own hooks) only for bench/loss.py
LOCK_PATH = Path("/run/lock/asyncfl-netns.lock")
# Link-local /30 subnets, skipping the first and last /24 that RFC 3927 reserves: k -> 169.254.k//64.(k%64)*4
SUBNETS = range(64, 255 * 64)
MTU = 65535  # loopback's


class NetemError(RuntimeError):
    """Network conditions were asked for that this machine cannot provide (or setting them up failed)."""


@dataclass
class Link:
    index: int
    netns: str
    host_if: str
    ns_if: str
    host_addr: str
    ns_addr: str
    conditions: LinkConditions
    mechanism: dict = field(default_factory=dict)  # what emulates each condition: netem, nftables, tbf
    rto_min_ms: float = 0.0  # TCP's minimum retransmission timeout on both routes (0 = Linux's default, 200 ms)

    def describe(self) -> dict:
        return {"netns": self.netns, "address": self.ns_addr, **asdict(self.conditions), "mechanism": self.mechanism,
                "rto_min_ms": self.rto_min_ms}


def link_names(owner_pid: int, index: int) -> tuple[str, str, str]:
    """(namespace, host-side veth, namespace-side veth); interface names stay within Linux's 15 characters."""
    return f"{NETNS_PREFIX}{owner_pid}-{index}", f"afl{owner_pid}h{index}", f"afl{owner_pid}n{index}"


def subnet_addresses(k: int) -> tuple[str, str]:
    base = (k % 64) * 4
    return f"169.254.{k // 64}.{base + 1}", f"169.254.{k // 64}.{base + 2}"


def free_subnets(used_addresses: set[str], count: int) -> list[int]:
    """The first ``count`` /30 subnets none of whose addresses is in use."""
    out = []
    for k in SUBNETS:
        if not used_addresses.intersection(subnet_addresses(k)):
            out.append(k)
            if len(out) == count:
                return out
    raise NetemError("no free link-local /30 subnet left")


def netem_args(c: LinkConditions) -> list[str]:
    args = []
    if c.delay_ms:
        args += ["delay", f"{c.delay_ms:g}ms"]
    if c.loss_pct:
        args += ["loss", f"{c.loss_pct:g}%"]
    if c.rate_mbit:
        args += ["rate", f"{c.rate_mbit:g}mbit"]
    return args + ["limit", "100000"]


def tbf_args(rate_mbit: float) -> list[str]:
    # The bucket must hold at least one 64 KiB packet (the MTU), or nothing passes.
    return ["rate", f"{rate_mbit:g}mbit", "burst", f"{2 * MTU}b", "latency", "1s"]


def _drop_rule(loss_pct: float) -> str:
    return f"numgen random mod 10000 < {int(round(loss_pct * 100))} counter drop"  # to 0.01 %


def nft_ingress_ruleset(table: str, device: str, loss_pct: float) -> str:
    """Random drop of ``loss_pct`` percent of the IP packets arriving on ``device``, before anything else
    sees them: the sender cannot tell them from packets lost on a wire. ARP is spared, as the paper's
    loopback had none to lose."""
    return (f"table netdev {table} {{\n"
            f"  chain ingress {{ type filter hook ingress device \"{device}\" priority 0; policy accept; "
            f"meta protocol ip {_drop_rule(loss_pct)}; }}\n}}\n")


def nft_local_ruleset(loss_pct: float) -> str:
    """The old placement, kept for bench/loss.py only: drops on the namespace's own input and output
    hooks, where an outgoing packet is dropped inside its sender, whose TCP sees the local drop at once."""
    rule = _drop_rule(loss_pct)
    return (f"table inet {NFT_TABLE} {{\n"
            f"  chain input {{ type filter hook input priority 0; policy accept; {rule}; }}\n"
            f"  chain output {{ type filter hook output priority 0; policy accept; {rule}; }}\n"
            f"}}\n")


def missing_tools(conditions: list[LinkConditions]) -> list[str]:
    """What a run with these conditions lacks before anything is created (root, ip, tc)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (network namespaces and qdiscs need CAP_NET_ADMIN; ./train.sh gets it without root, in user namespaces of its own)")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            missing.append(f"the '{tool}' command (Debian package iproute2)")
    return missing


def _run(cmd: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=30)


def _must(cmd: list[str], stdin: str | None = None) -> None:
    r = _run(cmd, stdin)
    if r.returncode != 0:
        raise NetemError(f"{' '.join(cmd)}: {(r.stderr or r.stdout).strip()}")


def _used_addresses() -> set[str]:
    out = _run(["ip", "-o", "-4", "addr", "show"]).stdout
    return set(re.findall(r"inet (169\.254\.\d+\.\d+)/", out))


class NetworkLab:
    """The namespaces and links of one server/main.py process; ``close()`` removes every one of them."""

    def __init__(self, owner_pid: int | None = None, drop_at: str = "ingress"):
        if drop_at not in DROP_AT:
            raise ValueError(f"drop_at must be one of {DROP_AT}")
        self.owner_pid = owner_pid or os.getpid()
        self.drop_at = drop_at
        self.links: list[Link] = []
        self._netem: bool | None = None
        self._host_tables: dict[int, str] = {}  # link index -> its table in the calling namespace

    def create(self, conditions: list[LinkConditions], rto_min_ms: float = 0.0) -> list[Link]:
        """One namespace and link per server; ``rto_min_ms`` > 0 sets TCP's minimum retransmission timeout
        on the routes both ways (Linux's default is 200 ms; the paper regime scales it with its clock)."""
        missing = missing_tools(conditions)
        if missing:
            raise NetemError("network conditions need " + " and ".join(missing))
        cleanup_stale()
        LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
        with open(LOCK_PATH, "w") as lock:  # two runs starting at once must not pick the same subnets
            fcntl.flock(lock, fcntl.LOCK_EX)
            subnets = free_subnets(_used_addresses(), len(conditions))
            try:
                for i, (c, k) in enumerate(zip(conditions, subnets)):
                    self._create_link(i, c, k, rto_min_ms)
            except BaseException:
                self.close()
                raise
        return self.links

    def _create_link(self, index: int, c: LinkConditions, k: int, rto_min_ms: float = 0.0) -> Link:
        netns, host_if, ns_if = link_names(self.owner_pid, index)
        host_addr, ns_addr = subnet_addresses(k)
        link = Link(index, netns, host_if, ns_if, host_addr, ns_addr, c)
        self.links.append(link)  # registered first, so a failure below is still cleaned up
        _must(["ip", "netns", "add", netns])
        _must(["ip", "link", "add", host_if, "mtu", str(MTU), "type", "veth", "peer", "name", ns_if,
               "mtu", str(MTU), "netns", netns])
        _must(["ip", "addr", "add", f"{host_addr}/30", "dev", host_if])
        _must(["ip", "link", "set", host_if, "up"])
        ns = ["ip", "netns", "exec", netns]
        _must(ns + ["ip", "addr", "add", f"{ns_addr}/30", "dev", ns_if])
        _must(ns + ["ip", "link", "set", ns_if, "up"])
        _must(ns + ["ip", "link", "set", "lo", "up"])
        if rto_min_ms > 0:
            rto = ["rto_min", f"{rto_min_ms:g}ms"]
            _must(["ip", "route", "replace", f"{ns_addr}/32", "dev", host_if, "src", host_addr] + rto)
            _must(ns + ["ip", "route", "replace", f"{host_addr}/32", "dev", ns_if, "src", ns_addr] + rto)
            link.rto_min_ms = rto_min_ms
        self._apply(link)
        return link

    def _has_netem(self, host_if: str) -> bool:
        if self._netem is None:
            r = _run(["tc", "qdisc", "add", "dev", host_if, "root", "netem", "delay", "0ms"])
            self._netem = r.returncode == 0
            if self._netem:
                _must(["tc", "qdisc", "del", "dev", host_if, "root"])
        return self._netem

    def _apply(self, link: Link) -> None:
        c = link.conditions
        if c.is_clean():
            return
        ends = [["tc", "qdisc", "add", "dev", link.host_if, "root"],
                ["ip", "netns", "exec", link.netns, "tc", "qdisc", "add", "dev", link.ns_if, "root"]]
        if self._has_netem(link.host_if):
            for end in ends:
                _must(end + ["netem"] + netem_args(c))
            link.mechanism = {k: "netem" for k, v in (("loss", c.loss_pct), ("delay", c.delay_ms), ("rate", c.rate_mbit)) if v}
            return
        if c.delay_ms:
            raise NetemError(f"server {link.index}: a delay needs the kernel's netem qdisc (sch_netem), which this "
                             "kernel does not have; loss and rate work without it")
        if c.loss_pct:
            if shutil.which("nft") is None:
                raise NetemError("loss without netem needs the 'nft' command (Debian package nftables)")
            in_ns = ["ip", "netns", "exec", link.netns, "nft", "-f", "-"]
            if self.drop_at == "local":
                _must(in_ns, stdin=nft_local_ruleset(c.loss_pct))
                link.mechanism["loss"] = "nftables local (sender's hooks)"
            else:
                host_table = f"asyncfl_{self.owner_pid}_{link.index}"
                self._host_tables[link.index] = host_table  # first, so that a failure below still removes it
                _must(["nft", "-f", "-"], stdin=nft_ingress_ruleset(host_table, link.host_if, c.loss_pct))
                _must(in_ns, stdin=nft_ingress_ruleset(NFT_TABLE, link.ns_if, c.loss_pct))
                link.mechanism["loss"] = "nftables netdev ingress (both ends)"
        if c.rate_mbit:
            for end in ends:
                _must(end + ["tbf"] + tbf_args(c.rate_mbit))
            link.mechanism["rate"] = "tbf"

    def close(self) -> None:
        """Delete the namespaces (their veth ends, qdiscs and tables go with them) and this side's tables."""
        for link in self.links:
            _run(["ip", "netns", "del", link.netns])
            _run(["ip", "link", "del", link.host_if])  # normally gone with its peer already
        for table in self._host_tables.values():
            _run(["nft", "delete", "table", "netdev", table])
        self.links, self._host_tables = [], {}

    def dropped(self) -> list[dict[str, int]]:
        """Packets dropped so far by the nftables rules, per link and direction: {'to_server': n, 'to_client': n}."""
        out = []
        for link in self.links:
            ns = ["ip", "netns", "exec", link.netns]
            table = self._host_tables.get(link.index)
            if table is None:  # the local placement (input: to the server; output: to the client), or no loss
                counts = [int(n) for n in re.findall(r"counter packets (\d+)", _run(
                    ns + ["nft", "list", "table", "inet", NFT_TABLE]).stdout)] + [0, 0]
                out.append({"to_server": counts[0], "to_client": counts[1]})
                continue
            out.append({"to_client": _counted(_run(["nft", "list", "table", "netdev", table]).stdout),
                        "to_server": _counted(_run(ns + ["nft", "list", "table", "netdev", NFT_TABLE]).stdout)})
        return out


def _counted(listing: str) -> int:
    m = re.search(r"counter packets (\d+)", listing)
    return int(m.group(1)) if m else 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale() -> list[str]:
    """Remove namespaces and veths of this project whose owning process is gone. Returns what was removed."""
    if shutil.which("ip") is None or os.geteuid() != 0:
        return []
    removed = []
    for line in _run(["ip", "netns", "list"]).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        m = re.fullmatch(rf"{NETNS_PREFIX}(\d+)-\d+", name)
        if m and not _alive(int(m.group(1))):
            _run(["ip", "netns", "del", name])
            removed.append(name)
    for m in re.finditer(r"^\d+: (afl(\d+)h\d+)[@:]", _run(["ip", "-o", "link", "show"]).stdout, re.M):
        if not _alive(int(m.group(2))):
            _run(["ip", "link", "del", m.group(1)])
            removed.append(m.group(1))
    if shutil.which("nft"):
        for table in re.findall(r"^table netdev (\S+)", _run(["nft", "list", "tables", "netdev"]).stdout, re.M):
            m = HOST_TABLE.fullmatch(table)
            if m and not _alive(int(m.group(1))):
                _run(["nft", "delete", "table", "netdev", table])
                removed.append(table)
    return removed


def enter_netns(name: str) -> None:
    """Move the calling thread (and every thread and socket it creates later) into namespace ``name``."""
    CLONE_NEWNET = 0x40000000
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {name} failed")
    finally:
        os.close(fd)
