"""One run: start the data owners, wait until they all listen, run the model owner, stop what was started.

    ./train.sh --n-servers 4 --stdev 600 --staleness-threshold 6 --duration-s 60     # train.sh runs this
    python -m asyncfl.launch --regime paper --loss 20% --dataset fashion-mnist

Every flag of server/main.py and client/main.py is a flag here (settings.LaunchArgs declares them once) and goes
to the process it belongs to. Data owners elsewhere (``--servers ws://...``) start nothing locally.
Ctrl-C or SIGTERM stops training early; the client still writes its results. The exit status is the
client's: 0 done, 1 failed, 130 interrupted; 2 for a bad flag, which the process it belongs to reports.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

from asyncfl.core import rules, schema
from asyncfl.core.conditions import Links
from asyncfl.core.naming import single_run_dir
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
    return Path(single_run_dir(loss, args.stdev, rules.threshold(args.aggregation, args.staleness_threshold),
                               args.aggregation, args.partition))


DEFAULT_BASE_PORT = next(f.default for f in fields(LaunchArgs) if f.name == "base_port")


def ports_taken(host: str, base_port: int, n: int) -> list[int]:
    """The ports among base_port .. base_port + n - 1 that something on ``host`` holds already (a bind probe:
    what the servers would do, without listening)."""
    taken = []
    for port in range(base_port, base_port + n):
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: TIME_WAIT is no owner
            try:
                probe.bind((host, port))
            except OSError as e:
                if e.errno == errno.EADDRINUSE:  # any other refusal (an address not of this host) is the servers' to report
                    taken.append(port)
    return taken


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
    if (out_dir / schema.CONFIG).exists():
        if not args.overwrite:
            print(f"train.sh: --out-dir {out_dir} holds a run already (its config.json); give another folder, "
                  "or --overwrite to replace it", file=sys.stderr)
            return 2
        shutil.rmtree(out_dir)  # all of it: an old run.png or summary.csv would pass for the new run's
    if args.servers or links.in_namespaces() or args.base_port == 0:
        pass  # no ports of this host to take: elsewhere, in namespaces of the run's own, or free ones
    elif busy := ports_taken(args.host, args.base_port, args.n_servers):
        if args.base_port != DEFAULT_BASE_PORT:
            print(f"train.sh: --base-port {args.base_port}: port {busy[0]} on {args.host} is in use (another run?): "
                  "pick another --base-port, or 0 for free ports", file=sys.stderr)
            return 2
        print(f"train.sh: port {busy[0]} on {args.host} is in use (another run?): the servers take free ports "
              "(--base-port 0)", flush=True)
        args = replace(args, base_port=0)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(out_dir, os.W_OK | os.X_OK):  # nothing is started for a run that cannot write
            raise PermissionError(13, "Permission denied")
    except OSError as e:
        print(f"train.sh: --out-dir {out_dir}: {e.strerror or e}", file=sys.stderr)
        return 2
    status = pysyft.run(args, out_dir) if args.backend == "pysyft" else run_native(args, out_dir, links)
    if args.plot and status in (0, 130) and (out_dir / schema.CONFIG).exists():
        draw(out_dir)
    return status


def draw(out_dir: Path) -> None:
    """run.png in the run folder, by the analysis tool a user would run (its own process: the launcher
    does not import analysis), and the line that names it."""
    cmd = [sys.executable, "-m", "asyncfl.analysis.plot", str(out_dir)]
    try:
        drawn = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        drawn = None
    if drawn is not None and drawn.returncode == 0:
        print(f"train.sh: F1 over time and rounds per server: {out_dir / schema.FIGURE} (redraw: python {' '.join(cmd[1:])})")
    else:
        why = drawn.stderr.strip().splitlines()[-1:] if drawn is not None else ["timed out"]
        print(f"train.sh: run.png not drawn ({' '.join(why)}); the run's files are whole: {out_dir}", file=sys.stderr)


def run_native(args: LaunchArgs, out_dir: Path, links: Links) -> int:
    """This project's servers and client for one run, started and stopped; the client's exit status."""
    env = dict(os.environ)
    if not env.get("ASYNCFL_TOKEN") and not args.token:
        # A fresh secret per run: only this run's client may use its servers. It travels in the
        # environment, which (unlike arguments) ps does not show.
        env["ASYNCFL_TOKEN"] = secrets.token_hex(16)
    run = Run()
    signal.signal(signal.SIGINT, run.on_signal)
    signal.signal(signal.SIGTERM, run.on_signal)
    ready = out_dir / schema.SERVERS_READY
    ready.unlink(missing_ok=True)
    try:
        if args.servers:
            addresses = args.servers
        else:
            log = out_dir / schema.SERVERS_LOG
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
                return servers_failed(run, out_dir / schema.SERVERS_LOG)
    finally:
        run.close()
        ready.unlink(missing_ok=True)
        if os.geteuid() == 0:
            netem.cleanup_stale()  # namespaces of runs whose server/main.py was killed outright
