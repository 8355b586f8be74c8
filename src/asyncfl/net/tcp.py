"""TCP as the kernel runs it for one socket: its congestion control and its loss-recovery counters.

Both sides use it: the data owners set ``--tcp-cc`` on their listening and accepted sockets, the model
owner on each connection before it connects (``TCP_CONGESTION``), and each reads back what the live
socket uses. ``read_info`` parses ``TCP_INFO`` (struct tcp_info of linux/tcp.h; fields a kernel does not
return read as None), which is where rounds.csv's retransmissions, timeouts, backoff, RTO and RTT come
from. ``sysctls`` records the settings that change loss recovery, as they are in the calling process's
network namespace.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

TCP_CONGESTION = getattr(socket, "TCP_CONGESTION", 13)
TCP_INFO = getattr(socket, "TCP_INFO", 11)
DEFAULT_CC = "cubic"  # Linux's default since 2.6.19 (CONFIG_DEFAULT_TCP_CONG), so the paper's
SYSCTL_DIR = Path("/proc/sys/net/ipv4")
RECOVERY_SYSCTLS = ("tcp_congestion_control", "tcp_recovery", "tcp_early_retrans", "tcp_sack", "tcp_frto",
                    "tcp_syn_retries", "tcp_retries2", "tcp_thin_linear_timeouts")
INFO_BYTES = 256

# (name, struct format, byte offset) of the fields read; offsets from struct tcp_info (linux/tcp.h).
_FIELDS = (
    ("state", "B", 0), ("ca_state", "B", 1), ("retransmits", "B", 2), ("backoff", "B", 4),
    ("rto_us", "I", 8), ("unacked", "I", 24), ("lost", "I", 32), ("retrans", "I", 36),
    ("rtt_us", "I", 68), ("snd_cwnd", "I", 80), ("total_retrans", "I", 100),
    ("bytes_acked", "Q", 120), ("bytes_received", "Q", 128), ("rcv_ooopack", "I", 224),
    ("total_rto", "H", 240), ("total_rto_recoveries", "H", 242), ("total_rto_time_ms", "I", 244),
)


_BACKOFF = next(offset for name, _, offset in _FIELDS if name == "backoff")


class CcError(ValueError):
    """A congestion control this kernel does not offer, or that this process may not set."""


@dataclass(frozen=True)
class TcpInfo:
    state: int
    ca_state: int
    retransmits: int  # RTOs in a row without progress, now
    backoff: int  # exponential backoff of the RTO, now (reset by the next valid RTT sample)
    rto_us: int
    unacked: int
    lost: int
    retrans: int  # segments retransmitted and not yet acknowledged
    rtt_us: int  # smoothed RTT
    snd_cwnd: int
    total_retrans: int  # segments retransmitted over the connection's life
    bytes_acked: int | None
    bytes_received: int | None
    rcv_ooopack: int | None  # out-of-order packets received: holes left by packets lost on the way here
    total_rto: int | None  # retransmission timeouts (Linux 6.7+)
    total_rto_recoveries: int | None
    total_rto_time_ms: int | None


def parse_info(raw: bytes) -> TcpInfo:
    """A ``TCP_INFO`` buffer as the kernel returned it; fields past its length are None."""
    values = {}
    for name, fmt, offset in _FIELDS:
        size = struct.calcsize(fmt)
        values[name] = struct.unpack_from(fmt, raw, offset)[0] if offset + size <= len(raw) else None
    return TcpInfo(**values)


def read_info(sock: socket.socket) -> TcpInfo:
    return parse_info(sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO, INFO_BYTES))


def _on_live_tcp(read, sock: socket.socket):
    """``read(sock)``, or None for a socket that is not TCP or no longer open."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        return read(sock)
    except OSError:
        return None


def info_or_none(sock: socket.socket) -> TcpInfo | None:
    """``read_info``, or None for a socket that is not TCP or no longer open."""
    return _on_live_tcp(read_info, sock)


def backoff(sock: socket.socket) -> int:
    """The RTO backoff now: the one field of TCP_INFO read, for sampling it often (raises OSError)."""
    return sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO, _BACKOFF + 1)[_BACKOFF]


def congestion(sock: socket.socket) -> str:
    """The congestion control a live socket uses."""
    return sock.getsockopt(socket.IPPROTO_TCP, TCP_CONGESTION, 16).split(b"\0", 1)[0].decode()


def congestion_or_none(sock: socket.socket) -> str | None:
    """``congestion``, or None for a socket that is not TCP or no longer open."""
    return _on_live_tcp(congestion, sock)


def available() -> list[str]:
    """Congestion controls this kernel offers: loaded, or built as modules it can load."""
    names = _read(SYSCTL_DIR / "tcp_available_congestion_control").split()
    modules = Path("/lib/modules") / os.uname().release / "kernel" / "net" / "ipv4"
    if modules.is_dir():
        names += [p.name.split(".")[0][4:] for p in modules.glob("tcp_*.ko*")]
    return sorted(set(names))


def problem(name: str) -> str | None:
    """Why ``--tcp-cc name`` cannot be used on this kernel (None: it can)."""
    offered = available()
    if offered and name not in offered:
        return f"--tcp-cc: this kernel offers {' '.join(offered)} (got {name!r})"
    return None


def allowed_unprivileged() -> list[str]:
    """What a process without CAP_NET_ADMIN may set on its sockets."""
    return _read(SYSCTL_DIR / "tcp_allowed_congestion_control").split()


def set_congestion(sock: socket.socket, name: str) -> None:
    """Use ``name`` on ``sock``; raises CcError with what to do when it cannot."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_CONGESTION, name.encode())
    except OSError as e:
        if e.errno == errno.EPERM:
            raise CcError(f"--tcp-cc {name} needs CAP_NET_ADMIN (root, or a run in namespaces of its own); "
                          f"without it only {' '.join(allowed_unprivileged()) or 'the default'} may be set") from None
        if e.errno == errno.ENOENT:
            raise CcError(f"--tcp-cc: this kernel has no {name!r} (it offers {' '.join(available())})") from None
        raise
    if congestion(sock) != name:
        raise CcError(f"--tcp-cc {name}: the socket uses {congestion(sock)}")


def check_settable(name: str) -> None:
    """Raise CcError unless this process may set ``name`` on its sockets (a socket is made and closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        set_congestion(probe, name)


def sysctls() -> dict[str, str]:
    """The loss-recovery settings of this network namespace, as they are."""
    return {name: _read(SYSCTL_DIR / name) for name in RECOVERY_SYSCTLS}


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
