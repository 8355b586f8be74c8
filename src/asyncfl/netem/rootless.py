"""Network conditions without root: a run re-executes itself inside an unprivileged user, network and
mount namespace (``unshare --user --map-root-user --net --mount``).

Inside, the run is root over namespaces of its own: server/main.py creates its per-server namespaces, veth
pairs, nftables loss rules, tbf qdiscs and per-route ``rto_min`` there exactly as a root run does on the
host, and the client reaches the servers over those veths. Everything lives in the run's own network
namespace and vanishes with its last process: nothing is left behind, even after ``kill -9``. The launcher
(launch/main.py) does this by itself when a non-root user asks for loss, delay, rate, ``--netns always`` or
the paper regime; where the kernel forbids unprivileged user namespaces it stops before starting, naming
the setting to change.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ENV = "ASYNCFL_ROOTLESS"  # set in the re-executed launcher: it runs inside the namespaces
UNSHARE = ["unshare", "--user", "--map-root-user", "--net", "--mount"]
SYSCTLS = [  # (file, value that forbids, what to run)
    ("/proc/sys/kernel/unprivileged_userns_clone", "0", "sysctl -w kernel.unprivileged_userns_clone=1"),
    ("/proc/sys/user/max_user_namespaces", "0", "sysctl -w user.max_user_namespaces=15000"),
    ("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1",
     "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0"),
]


def inside() -> bool:
    return os.environ.get(ENV) == "1"


def unavailable() -> str | None:
    """Why this user cannot have namespaces of its own here (None: it can)."""
    if shutil.which("unshare") is None:
        return "the 'unshare' command is missing (Debian package util-linux)"
    for path, forbids, fix in SYSCTLS:
        try:
            if Path(path).read_text().strip() == forbids:
                return f"the kernel forbids unprivileged user namespaces ({path} is {forbids}): as root, {fix}"
        except OSError:
            continue
    try:
        probe = subprocess.run([*UNSHARE, "true"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unshare failed: {e}"
    if probe.returncode != 0:
        return (f"unshare failed ({probe.stderr.strip() or probe.returncode}): the kernel forbids unprivileged "
                "user namespaces; as root, " + "; or ".join(fix for _, _, fix in SYSCTLS))
    return None


def reexec(argv: list[str]) -> None:
    """Replace this process with the same launcher inside new namespaces (same pid: signals still reach it).
    ip, tc and nft live in /usr/sbin, which a user's PATH often lacks: it is added."""
    path = os.environ.get("PATH", "/usr/bin:/bin")
    extra = [d for d in ("/usr/sbin", "/sbin") if d not in path.split(":")]
    env = {**os.environ, ENV: "1", "PATH": ":".join([path, *extra])}
    os.execvpe(UNSHARE[0], [*UNSHARE, "--", sys.executable, "-m", "asyncfl.launch", *argv], env)


def prepare() -> None:
    """First thing inside: loopback up, and a /run/netns that this namespace's root may write (the host's
    /run belongs to the real root; a tmpfs over it is private to this mount namespace)."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True, capture_output=True, timeout=10)
    try:
        Path("/run/netns").mkdir(exist_ok=True)
        probe = Path("/run/netns") / f".asyncfl-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=755", "asyncfl-run", "/run"], check=True,
                       capture_output=True, timeout=10)
        Path("/run/netns").mkdir(exist_ok=True)
