"""Process lifetime: no process of a run may outlive the one that started it."""

from __future__ import annotations

import ctypes
import os
import select
import signal
import sys
import threading


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to send ``sig`` to this process when its parent dies, even by SIGKILL, so that nothing is
    orphaned (server/main.py's namespaces are then still removed by its SIGTERM handling)."""
    if sys.platform != "linux":
        return
    parent = os.getppid()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), sig)


def die_with(pid: int, sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` to this process when process ``pid`` ends, however it ends (a thread waits on a pidfd).

    For the data servers, whose parent is multiprocessing's fork server rather than server/main.py: the fork
    server lives as long as any process it forked holds its pipe, so PR_SET_PDEATHSIG on it would never
    fire after a ``kill -9`` of server/main.py, and the servers would linger."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:  # already gone
        os.kill(os.getpid(), sig)
        return
    except (OSError, AttributeError):  # not Linux >= 5.3
        return

    def wait() -> None:
        select.select([fd], [], [])  # readable once the process has ended
        os.kill(os.getpid(), sig)

    threading.Thread(target=wait, name=f"watch-{pid}", daemon=True).start()


def keep_freed_memory(arenas: int = 0) -> None:
    """Let glibc reuse freed memory instead of returning it to the kernel and mapping it afresh.

    Every round moves a few 1.7 MB buffers (weights in, weights out) and PyTorch allocates its activations
    anew; by default glibc serves blocks this large with a fresh mmap each time and unmaps them on free,
    faulting every page in again. Raising the mmap and trim thresholds keeps them in the heap, reused from
    round to round; memory use stays at its peak. ``arenas`` (0: glibc's default, 8 per core) caps the
    malloc arenas: each new thread otherwise may get an arena of its own that outlives it, which a server
    that gets a new connection thread at every reconnection keeps (docs/performance.md has the numbers)."""
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 * 1024 * 1024)  # M_MMAP_THRESHOLD: blocks below 64 MiB come from the heap
        libc.mallopt(-1, 256 * 1024 * 1024)  # M_TRIM_THRESHOLD: keep up to 256 MiB of free heap
        libc.mallopt(-2, 16 * 1024 * 1024)  # M_TOP_PAD: grow the heap in 16 MiB steps
        if arenas:
            libc.mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass
