"""Weights through shared memory, for a server on the same machine as the client.

Over the websocket a round moves the model twice (1.7 MB each way): the client masks and sends it, the
kernel copies it into and out of the loopback socket, the server parses it; then all of that again for the
reply. For a server reached on loopback the client can instead offer shared memory: the websocket still
carries every request and reply (the same gate, timeouts and errors), but the tensors stay in a memory
file both processes map, which holds two copies of the model at fixed offsets (both sides know the layout
from the architecture they agreed on at hello):

    [nonce, 64 bytes][request: the model the server is to train][reply: the model it trained]

The client makes the file with ``memfd_create`` (it has no name in any directory, so nothing can be left
behind), seals its size (a shrunk file would crash the server with SIGBUS at its next access), writes a
random nonce into it and sends ``attach`` with its pid, the file's descriptor number and the nonce. The
server opens ``/proc/<pid>/fd/<fd>`` (allowed only for the same user, or root), and maps it only if it is
a memory file sealed against shrinking, of exactly the expected size, holding the nonce (so it is this
client's file and on this machine). The client then closes its descriptor: the memory lives as long as
the two mappings.

A server that cannot attach (another machine, another container, another user, an old server) answers
``error`` and the client keeps sending weights in the websocket frames. Servers behind emulated network
conditions are never offered shared memory: their weights must cross the emulated link.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import re
import secrets
import stat
import sys

import torch

from asyncfl.core.model import FlatWeights, numel_of, one_dtype

MEMFD_NAME = "asyncfl-weights"  # shown as /memfd:asyncfl-weights (deleted) in /proc/<pid>/fd
NONCE_BYTES = 16
_HEAD = 64  # the nonce's slot; the model regions start 64-byte aligned after it
_SEALS = getattr(fcntl, "F_SEAL_SHRINK", 0) | getattr(fcntl, "F_SEAL_GROW", 0) | getattr(fcntl, "F_SEAL_SEAL", 0)

Spec = dict[str, tuple[tuple[int, ...], torch.dtype]]


def available() -> bool:
    return sys.platform == "linux" and hasattr(os, "memfd_create") and hasattr(fcntl, "F_ADD_SEALS")


def region_bytes(spec: Spec) -> int:
    """Bytes of one model in the segment: the tensors back to back in the spec's order, rounded up to 64."""
    return -(-numel_of(spec) * one_dtype(spec).itemsize // 64) * 64


def segment_bytes(spec: Spec) -> int:
    return _HEAD + 2 * region_bytes(spec)


class Segment:
    """One mapped segment with tensor views of its two model regions: ``request`` (client writes, server
    reads) and ``reply`` (server writes, client reads). Each side touches a region only while the protocol
    gives it the turn: the client between a reply and its next request, the server while serving one."""

    def __init__(self, mem: mmap.mmap, spec: Spec, fd: int | None = None):
        self._mem, self._fd = mem, fd
        size = region_bytes(spec)
        self.request = _views(mem, _HEAD, spec)
        self.reply = _views(mem, _HEAD + size, spec)

    @classmethod
    def create(cls, spec: Spec) -> tuple[Segment, dict]:
        """Client side: a new segment and the ``attach`` request's fields (pid, fd, nonce) that offer it.
        The caller calls ``close_fd`` once the server has answered. ValueError for a model whose tensors
        do not share one dtype (the regions are single flat tensors)."""
        size = segment_bytes(spec)
        fd = os.memfd_create(MEMFD_NAME, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
            # The memory is taken now, not at the first write of a round: a machine short of it refuses
            # here (OSError: the weights then go in the frames) instead of a SIGBUS mid-run, and the first
            # round does not pay for faulting its pages in.
            os.posix_fallocate(fd, 0, size)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            mem = _map(fd, size)
        except OSError:
            os.close(fd)
            raise
        nonce = secrets.token_bytes(NONCE_BYTES)
        mem[:NONCE_BYTES] = nonce
        return cls(mem, spec, fd), {"pid": os.getpid(), "fd": fd, "nonce": nonce.hex()}

    def close_fd(self) -> None:
        """Client side: the descriptor is no longer needed once the server has mapped the file (or refused)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @classmethod
    def attach(cls, pid, fd, nonce_hex, spec: Spec) -> Segment:
        """Server side: map the client's segment, or raise ValueError saying why not."""
        if not (_is_int(pid, 1, 2**22) and _is_int(fd, 0, 2**20)):
            raise ValueError("pid and fd must be the client's process id and descriptor number")
        if not isinstance(nonce_hex, str) or not re.fullmatch(r"[0-9a-f]{%d}" % (2 * NONCE_BYTES), nonce_hex):
            raise ValueError(f"nonce must be {2 * NONCE_BYTES} hex digits")
        path = f"/proc/{pid}/fd/{fd}"
        try:
            # Only ever a memory file of an asyncfl client: opening just any descriptor of this user's
            # processes (a device, a terminal) could have side effects.
            if not os.readlink(path).startswith(f"/memfd:{MEMFD_NAME} "):
                raise ValueError("that descriptor is not an asyncfl memory file")
            own = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as e:
            raise ValueError(f"cannot open the client's memory file ({e.strerror}): not on this machine, "
                             "or another user?") from None
        try:
            if not stat.S_ISREG(os.fstat(own).st_mode):
                raise ValueError("not a memory file (memfd) with seals")
            try:
                seals = fcntl.fcntl(own, fcntl.F_GET_SEALS)
            except OSError:
                raise ValueError("not a memory file (memfd) with seals") from None
            if seals & _SEALS != _SEALS:
                raise ValueError("the memory file's size is not sealed")
            if os.fstat(own).st_size != segment_bytes(spec):
                raise ValueError("the memory file is not of the model's size")
            mem = _map(own, segment_bytes(spec))
        finally:
            os.close(own)
        if mem[:NONCE_BYTES] != bytes.fromhex(nonce_hex):
            mem.close()
            raise ValueError("the memory file does not hold the client's nonce")
        return cls(mem, spec)


def _map(fd: int, size: int) -> mmap.mmap:
    """Map the whole file shared, with its page tables filled now (MAP_POPULATE) rather than one fault
    per page in the first round."""
    return mmap.mmap(fd, size, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))


def _is_int(x, low: int, high: int) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and low <= x < high


def _views(mem: mmap.mmap, offset: int, spec: Spec) -> FlatWeights:
    """The region at ``offset`` as the tensors of ``spec``, views of one flat tensor: a whole-model copy or
    check is one operation."""
    return FlatWeights.on(torch.frombuffer(mem, dtype=one_dtype(spec), count=numel_of(spec), offset=offset), spec)
