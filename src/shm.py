"""Weights through shared memory, for a server on the same machine as the client.

Over the websocket a round moves the model twice (1.7 MB each way): the client masks and sends it, the
kernel copies it into and out of the loopback socket, the server parses it; then all of that again for the
reply. For a server reached on loopback the client can instead offer a shared memory segment: the
websocket still carries every request and reply (the same gate, timeouts and errors), but the tensors stay
in the segment, which holds two copies of the model at fixed offsets (both sides know the layout from the
architecture they agreed on at hello):

    [nonce, 64 bytes][request: the model the server is to train][reply: the model it trained]

The client creates the segment (``/dev/shm/asyncfl-<32 hex>``, mode 0600), writes a random nonce into it
and sends ``attach`` with the name and the nonce; the server maps the file only if the name has exactly
that form, it is a regular file of this user of exactly the expected size, and it holds the nonce (so it
is the client's memory, not a file of the same name elsewhere). Once attached, the client unlinks the name:
the memory lives as long as the two mappings, and nothing is left behind if either side is killed.

A server that cannot attach (another machine, another container, an old server) answers ``error`` and the
client keeps sending weights in the websocket frames. Servers behind emulated network conditions are never
offered a segment: their weights must cross the emulated link.
"""

from __future__ import annotations

import mmap
import os
import re
import secrets
import stat

import torch

SHM_DIR = "/dev/shm"
NAME_PREFIX = "asyncfl-"
_NAME = re.compile(r"asyncfl-[0-9a-f]{32}")
NONCE_BYTES = 16
_HEAD = 64  # the nonce's slot; the model regions start 64-byte aligned after it

Spec = dict[str, tuple[tuple[int, ...], torch.dtype]]


def available() -> bool:
    return os.path.isdir(SHM_DIR) and os.access(SHM_DIR, os.W_OK)


def region_bytes(spec: Spec) -> int:
    """Bytes of one model in the segment: the tensors in the spec's order, each 64-byte aligned."""
    return sum(_aligned(torch.Size(shape).numel() * torch.empty(0, dtype=dtype).element_size())
               for shape, dtype in spec.values())


def _aligned(n: int) -> int:
    return -(-n // 64) * 64


def segment_bytes(spec: Spec) -> int:
    return _HEAD + 2 * region_bytes(spec)


class Segment:
    """One mapped segment with tensor views of its two model regions: ``request`` (client writes, server
    reads) and ``reply`` (server writes, client reads). Each side touches a region only while the protocol
    gives it the turn: the client between a reply and its next request, the server while serving one."""

    def __init__(self, name: str, mem: mmap.mmap, spec: Spec):
        self.name, self._mem = name, mem
        size = region_bytes(spec)
        self.request = _views(mem, _HEAD, spec)
        self.reply = _views(mem, _HEAD + size, spec)

    @classmethod
    def create(cls, spec: Spec) -> tuple[Segment, str]:
        """Client side: a new segment and the nonce (hex) written into it. The caller unlinks it once the
        server has attached, or when it gives up."""
        name = NAME_PREFIX + secrets.token_hex(16)
        fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.ftruncate(fd, segment_bytes(spec))
            mem = mmap.mmap(fd, segment_bytes(spec))
        except OSError:
            os.unlink(os.path.join(SHM_DIR, name))
            raise
        finally:
            os.close(fd)
        nonce = secrets.token_bytes(NONCE_BYTES)
        mem[:NONCE_BYTES] = nonce
        return cls(name, mem, spec), nonce.hex()

    @classmethod
    def attach(cls, name: str, nonce_hex: str, spec: Spec) -> Segment:
        """Server side: map the client's segment, or raise ValueError saying why not."""
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError("shared memory name must be asyncfl- and 32 hex digits")
        if not isinstance(nonce_hex, str) or not re.fullmatch(r"[0-9a-f]{%d}" % (2 * NONCE_BYTES), nonce_hex):
            raise ValueError(f"nonce must be {2 * NONCE_BYTES} hex digits")
        try:
            fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR | os.O_NOFOLLOW)
        except OSError as e:
            raise ValueError(f"cannot open the shared memory segment ({e.strerror}): not on this machine?") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_size != segment_bytes(spec):
                raise ValueError("shared memory segment is not this user's regular file of the model's size")
            mem = mmap.mmap(fd, st.st_size)
        finally:
            os.close(fd)
        if mem[:NONCE_BYTES] != bytes.fromhex(nonce_hex):
            mem.close()
            raise ValueError("shared memory segment does not hold the client's nonce")
        return cls(name, mem, spec)

    def unlink(self) -> None:
        """Remove the name (the mappings stay valid). Only the creator calls this."""
        try:
            os.unlink(os.path.join(SHM_DIR, self.name))
        except FileNotFoundError:
            pass


def _views(mem: mmap.mmap, offset: int, spec: Spec) -> dict[str, torch.Tensor]:
    out = {}
    for name, (shape, dtype) in spec.items():
        numel = torch.Size(shape).numel()
        out[name] = torch.frombuffer(mem, dtype=dtype, count=numel, offset=offset).view(shape)
        offset += _aligned(numel * out[name].element_size())
    return out


def copy_into(dst: dict[str, torch.Tensor], src: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copy ``src``'s tensors into ``dst``'s (same names and shapes); returns ``dst``."""
    for k, t in dst.items():
        t.copy_(src[k])
    return dst
