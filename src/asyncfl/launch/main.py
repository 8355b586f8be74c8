"""One run: start the data owners, wait until they all listen, run the model owner, stop what was started.

    ./train.sh --n-servers 4 --stdev 600 --staleness-threshold 6 --duration-s 60     # train.sh runs this
    python -m asyncfl.launch --regime paper --loss 20% --dataset fashion-mnist

Every flag of server/main.py and client/main.py is a flag here (settings.LaunchArgs declares them once) and goes
to the process it belongs to. Data owners elsewhere (``--servers ws://...``) start nothing locally.
Ctrl-C or SIGTERM stops training early; the client still writes its results. The exit status is the
client's: 0 done, 1 failed, 130 interrupted; 2 for a bad flag, which the process it belongs to reports.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import fields
from datetime import datetime
from pathlib import Path

from asyncfl.core.conditions import Links
from asyncfl.core.naming import run_name
from asyncfl.net import tcp
from asyncfl.netem import lab as netem
from asyncfl.netem import rootless
from asyncfl.settings import ClientArgs, LaunchArgs, ServerArgs, problems

MANAGED = {"ready_file", "server_id", "shard", "port", "die_with_parent", "servers", "out_dir"}  # set below


def flags(cls, args: LaunchArgs) -> list[str]:
    """The command-line flags of ``cls``'s fields whose value in ``args`` differs from ``cls``'s default."""
    out = []
    for f in fields(cls):
        value = getattr(args, f.name)
        if f.name in MANAGED or value == f.default:
            continue
        name = f.name.replace("_", "-")
        out += ([f"--{name}"] if value else [f"--no-{name}"]) if isinstance(value, bool) else [f"--{name}", str(value)]
    return out


def default_out_dir(args: LaunchArgs) -> Path:
    loss = args.losses.replace(" ", "_") if args.losses.strip() else args.loss.rstrip("%")
    return Path("out") / run_name(loss, args.stdev, args.staleness_threshold, when=datetime.now())


def known_addresses(args: LaunchArgs, links: Links) -> str | None:
    """The servers' addresses before they listen, when fixed ports on the host make them known (not with
    free ports or namespaces, which the paper regime always uses); None otherwise."""
    if args.base_port == 0 or links.in_namespaces():
        return None
    scheme = "wss" if args.certfile else "ws"
    return ",".join(f"{scheme}://{args.host}:{args.base_port + i}" for i in range(args.n_servers))


class Run:
    """The two child processes and how they stop: a signal stops both at once (the client cuts its rounds
    in flight anyway, and waiting for it first would add the servers' shutdown to an interrupted run)."""

    def __init__(self):
        self.servers: subprocess.Popen | None = None
        self.client: subprocess.Popen | None = None
        self.stopping = False

    def on_signal(self, signum, frame) -> None:
        if not self.stopping:
            print("train.sh: stopping", flush=True)
        self.stopping = True
        for proc in (self.client, self.servers):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def close(self) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for proc in (self.client, self.servers):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (self.client, self.servers):
            if proc is not None:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def servers_failed(run: Run, log: Path) -> int:
    """Say why the servers did not start (the end of their log); server/main.py's own 2 (a setting it
    refused, e.g. a split under one batch) is the run's, anything else is 1."""
    tail = log.read_text().splitlines()[-5:] if log.exists() else []
    print("train.sh: the servers failed to start:", *tail, sep="\n", file=sys.stderr)
    return 2 if run.servers.poll() == 2 else 1


def wait_ready(run: Run, ready: Path, log: Path, timeout_s: float) -> str | int:
    """The servers' addresses once their ready file appears (server/main.py's readiness signal, written whole
    and renamed into place), or an exit status."""
    deadline = time.monotonic() + timeout_s
    while not ready.exists():
        if run.stopping:
            return 130
        if run.servers.poll() is not None or time.monotonic() > deadline:
            return servers_failed(run, log)
        time.sleep(0.1)
    return ready.read_text().strip()


def main(args: LaunchArgs) -> int:
    if bad := problems(args):  # before anything starts
        print("train.sh: " + "\ntrain.sh: ".join(bad), file=sys.stderr)
        return 2
    if args.backend == "pysyft":
        from asyncfl.launch import pysyft  # here: it imports PyTorch, and --help must answer at once
    if args.backend == "pysyft" and (why := pysyft.refusal(args)):
        print(f"train.sh: {why}", file=sys.stderr)
        return 2
    links = Links.from_args(args)  # checked by problems(); server/main.py puts them in namespaces if this says so
    if rootless.inside():
        rootless.prepare()
    elif os.geteuid() != 0 and (links.in_namespaces() or args.tcp_cc not in tcp.allowed_unprivileged()):
        # A congestion control a user may not set (cubic, on a machine that allows only reno and bbr) can be
        # set in namespaces of its own; servers elsewhere cannot be reached from those.
        what = "network namespaces" if links.in_namespaces() else f"--tcp-cc {args.tcp_cc} (CAP_NET_ADMIN)"
        if args.servers and not links.in_namespaces():
            print(f"train.sh: {what} needs root here (a user may set only {' '.join(tcp.allowed_unprivileged())}); "
                  "run as root or pick one of those", file=sys.stderr)
            return 2
        if why := rootless.unavailable():
            print(f"train.sh: {what} need root or user namespaces, and {why}", file=sys.stderr)
            return 2
        rootless.reexec(sys.argv[1:])  # does not return: this launcher again, as root of its own namespaces
    out_dir = Path(args.out_dir) if args.out_dir else default_out_dir(args)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(out_dir, os.W_OK | os.X_OK):  # nothing is started for a run that cannot write
            raise PermissionError(13, "Permission denied")
    except OSError as e:
        print(f"train.sh: --out-dir {out_dir}: {e.strerror or e}", file=sys.stderr)
        return 2
    if args.backend == "pysyft":
        return pysyft.run(args, out_dir)
    env = dict(os.environ)
    if not env.get("ASYNCFL_TOKEN") and not args.token:
        # A fresh secret per run: only this run's client may use its servers. It travels in the
        # environment, which (unlike arguments) ps does not show.
        env["ASYNCFL_TOKEN"] = secrets.token_hex(16)
    run = Run()
    signal.signal(signal.SIGINT, run.on_signal)
    signal.signal(signal.SIGTERM, run.on_signal)
    ready = out_dir / "servers.ready"
    ready.unlink(missing_ok=True)
    try:
        if args.servers:
            addresses = args.servers
        else:
            log = out_dir / "servers.log"
            with open(log, "w") as log_file:
                run.servers = subprocess.Popen(
                    [sys.executable, "-m", "asyncfl.server", *flags(ServerArgs, args), "--ready-file", str(ready),
                     "--die-with-parent"], stdout=log_file, stderr=subprocess.STDOUT, env=env)
            print(f"train.sh: starting {args.n_servers} servers (log: {log})", flush=True)
            addresses = known_addresses(args, links)  # the client then starts now and connects once they listen
            if addresses is None:
                addresses = wait_ready(run, ready, log, args.start_timeout_s + 30)
                if isinstance(addresses, int):
                    return addresses
        run.client = subprocess.Popen(
            [sys.executable, "-m", "asyncfl.client", "--servers", addresses, *flags(ClientArgs, args),
             "--out-dir", str(out_dir), "--die-with-parent"], env=env)
        while True:
            try:
                return run.client.wait(0.2)
            except subprocess.TimeoutExpired:
                pass
            # Servers that die before they all listen leave the client waiting for them: stop it.
            if run.servers is not None and run.servers.poll() is not None and not ready.exists():
                run.client.terminate()
                run.client.wait()
                return servers_failed(run, out_dir / "servers.log")
    finally:
        run.close()
        ready.unlink(missing_ok=True)
        if os.geteuid() == 0:
            netem.cleanup_stale()  # namespaces of runs whose server/main.py was killed outright
