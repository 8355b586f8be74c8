"""A data owner ("server" in the paper): hosts one shard and trains the model it is sent.

This plays the role of PySyft 0.2's ``WebsocketServerWorker`` (which no longer installs): the model owner
sends a :class:`TrainConfig` and the current weights, the owner runs ``fit(dataset_key=...)`` for
``max_nr_batches`` batches of SGD on its own data and sends the new weights back with the mean loss, the
number of samples used and its compute time. It then idles before replying so that the round lasts r
times the larger of its compute time and its pace (speed ratio r >= 1 emulates a slower data owner, a
pace the paper regime's round length; see core/regime.py).

``serve_shard`` is the body of one server process (``server/main.py`` starts one per server); each
connection's requests are answered by ``ConnectionHandler`` on whichever wire they come (server/wires/).
"""

from __future__ import annotations

import errno
import logging
import signal
import threading
from dataclasses import dataclass, field

import numpy as np
import torch

from asyncfl.core.data import to_tensor
from asyncfl.core.split import shard_fingerprint
from asyncfl.core.task import ShardTrainer
from asyncfl.net import auth, tcp, transport, wire, wsserver
from asyncfl.netem.lab import enter_netns
from asyncfl.process.lifecycle import die_with, keep_freed_memory
from asyncfl.process.runlog import setup_logging
from asyncfl.server import pysyft, wires

log = logging.getLogger("asyncfl.server")
# --faults original: websockets 8.1 (PySyft 0.2.3's server) gives an opening handshake no deadline (its
# open_timeout came with websockets 10), so a handshake slowed by loss is never dropped; the front door's
# bound on pending handshakes (net/wsserver.py's max_pending) still holds what idle peers can take.
ORIGINAL_OPEN_TIMEOUT_S = 3600.0


@dataclass
class ServerSpec:
    """Everything one server process needs (handed to it by server/main.py when it forks the process)."""

    index: int
    name: str
    host: str
    port: int  # 0 = any free port (the chosen one is reported through the ready queue)
    dataset_key: str
    images: np.ndarray  # uint8 [n, H, W]
    labels: np.ndarray  # int64 [n]
    seed: int
    speed_ratio: float
    split: dict  # how the shard was made (dataset, n_servers, stdev, seed), reported by hello
    netns: str | None = None  # network namespace to run in (see netem/lab.py), None = the current one
    network: dict = field(default_factory=dict)  # the link's conditions and how they are emulated, reported by hello
    token: str | None = None  # shared secret every connection must present (see net/auth.py); None = no check
    certfile: str = ""  # TLS certificate (PEM); with keyfile, the server speaks wss://
    keyfile: str = ""  # TLS private key (PEM)
    owner_pid: int = 0  # server/main.py: this server stops when that process ends (0 = never)
    pace_s: float = 0.0  # each round lasts at least this long (idle after compute; see core/regime.py)
    tcp_cc: str | None = None  # TCP congestion control of its sockets (None: the namespace's default)
    faults: str = "modern"  # original: all connections share one queue of received messages (server/pysyft.py)
    warm_torchscript: bool = False  # make the original wire's TorchScript archive before listening (paper regime)
    regime: str = "fast"  # reported by hello, so a client of the other regime refuses it


def serve_shard(spec: ServerSpec, ready_queue) -> None:
    """Body of one server process: host the shard on a websocket until SIGTERM."""
    become_owner_process(spec)
    trainer = make_trainer(spec)
    fingerprint = shard_fingerprint(spec.split, spec.index)
    info = {"split": spec.split, "index": spec.index, "network": spec.network, "shard_fingerprint": fingerprint,
            "regime": spec.regime}
    fatal: list[str] = []

    def stop_for_restart(reason: str) -> None:  # server/main.py starts a server that exited again
        fatal.append(reason)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)

    server = listen(spec, ConnectionHandler(trainer, info, spec.faults), stop_for_restart, ready_queue)
    accept = threading.Thread(target=server.serve_forever, name=f"{spec.name}-accept")
    accept.start()
    port = server.socket.getsockname()[1]  # with --base-port 0, the one the kernel chose
    log.info("%d samples (shard sha256 %s), listening on %s://%s:%d%s", len(spec.labels), fingerprint["sha256"],
             "wss" if spec.certfile else "ws", spec.host, port, " (token required)" if spec.token else "")
    ready_queue.put((spec.index, port))
    signal.sigwait({signal.SIGTERM})
    log.info("stopping (%s)", ", ".join(f"{k} {v}" for k, v in server.counts().items()))
    server.shutdown()
    accept.join()
    if fatal:
        log.error("%s; exiting so that server/main.py starts this server again", fatal[0])
        raise SystemExit(3)


def become_owner_process(spec: ServerSpec) -> None:
    """Namespace, threads, memory, logs and signals of a freshly forked owner process."""
    if spec.netns:
        enter_netns(spec.netns)  # first, while this is the only thread: later threads and sockets follow
    torch.set_num_threads(1)  # one core per server; more threads only contend on a small machine
    keep_freed_memory(arenas=2)  # one request at a time: two arenas serve every connection thread
    setup_logging()
    # Ctrl-C reaches the whole process group: leave it to server/main.py, which stops us with SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # SIGTERM is blocked here, and so in every thread started from now on, and taken synchronously with
    # sigwait: a handler would run only when the main thread's blocking accept() happened to return.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    if spec.owner_pid:
        die_with(spec.owner_pid)  # stop with server/main.py, however it ends (even kill -9)


def make_trainer(spec: ServerSpec) -> ShardTrainer:
    trainer = ShardTrainer(
        name=spec.name,
        dataset_key=spec.dataset_key,
        images=to_tensor(spec.images, spec.dataset_key),
        labels=torch.from_numpy(spec.labels),
        seed=spec.seed * 1000 + spec.index,
        speed_ratio=spec.speed_ratio,
        pace_s=spec.pace_s,
    )
    trainer.warm_up()
    if spec.warm_torchscript:
        # The original wire's model payload is cut from this model's TorchScript archive (about a second to
        # make, 70 MB of TorchScript): made before listening, not in the first round of a paced run.
        pysyft.warm_up(spec.dataset_key)
    return trainer


class ConnectionHandler:
    """One accepted connection, in its own thread: read a request, answer it on whichever wire it came
    (server/wires/), read the next; with ``faults="original"``, through the one queue all connections
    share, as PySyft 0.2.3's server did (server/pysyft.py)."""

    def __init__(self, trainer: ShardTrainer, info: dict, faults: str):
        self.trainer, self.info = trainer, info
        self.wires = wires.for_owner(trainer)
        self.shared = pysyft.SharedQueue() if faults == "original" else None
        self.sysctls = tcp.sysctls()  # this namespace's: a fresh one has the kernel's defaults, not the host's

    def __call__(self, conn: transport.Connection) -> None:
        peer = conn.remote_address
        log.info("connection from %s", peer)
        counts = {"served": 0, "refused": 0}
        # What this connection's socket really uses, reported by hello (config.json records it).
        answer = wires.answerer(self.wires, {**self.info, "tcp": {"cc": tcp.congestion_or_none(conn.sock),
                                                                   "sysctl": self.sysctls}})
        # Each connection has its own thread, whose first training call would be several times slower:
        # paid here, while the client is still connecting, instead of in its first round.
        self.trainer.warm_up()

        def serve(message):
            reply, reason = answer(message)
            counts["served" if reason is None else "refused"] += 1
            if reason is not None and counts["refused"] <= 3:  # a flood of bad requests must not flood the log
                log.warning("refused a request from %s: %s", peer, reason)
            return reply

        if self.shared is not None:
            _, why = pysyft.shared_queue_session(conn, self.shared, serve)
        else:
            try:
                while True:
                    conn.send(serve(conn.recv()))
            except transport.ConnectionClosed as e:
                why = str(e)
        log.info("connection from %s ended (%s); %d requests served, %d refused", peer, why, counts["served"],
                 counts["refused"])


def listen(spec: ServerSpec, handler, on_fatal, ready_queue) -> wsserver.Server:
    """The owner's listening server; a port that cannot be had is reported (-1) and ends the process."""
    try:
        # One thread per accepted connection reads a request, answers it, reads the next: a client has at
        # most one request out, so nothing is read ahead. (--faults original reads ahead into the owner's
        # one queue, as PySyft did: bounded there, server/pysyft.MAX_QUEUED.)
        return wsserver.Server(spec.host, spec.port, handler, auth.token_check(spec.token, spec.name),
                               wire.MAX_FRAME_BYTES, auth.server_ssl_context(spec.certfile, spec.keyfile),
                               name=spec.name, on_error=lambda e: log.info("dropped a connection: %s", e),
                               on_fatal=on_fatal, tcp_cc=spec.tcp_cc,
                               open_timeout_s=ORIGINAL_OPEN_TIMEOUT_S if spec.faults == "original" else 5.0)
    except (OSError, ValueError) as e:
        hint = " (another run holds it? --base-port 0 picks free ports)" if getattr(e, "errno", None) == errno.EADDRINUSE else ""
        log.error("cannot listen on %s:%d: %s%s", spec.host, spec.port, e, hint)
        ready_queue.put((spec.index, -1))
        raise SystemExit(1) from None
