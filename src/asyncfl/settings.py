"""Every setting of the entry points, declared once: the split, the data owners, the model owner.

``server/main.py`` takes ``ServerArgs``, ``client/main.py`` ``ClientArgs``, ``split_dataset.py`` the split part
(``SplitSettings``), and the launcher behind ``train.sh`` (launch/main.py) ``LaunchArgs``, which is both.
Each field's comment is its ``--help`` text, with its unit. Nothing here imports PyTorch, so ``--help``
and a bad flag answer at once.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field, fields, make_dataclass, replace
from typing import Annotated, Literal

import tyro

from asyncfl.core import datasets, rules
from asyncfl.core import regime as regime_mod
from asyncfl.core.conditions import Links, LinkSettings
from asyncfl.core.naming import flag as _flag
from asyncfl.core.split import SplitSettings
from asyncfl.net import tcp


@dataclass
class ServerArgs(SplitSettings, LinkSettings):
    """server/main.py: the data owners of one split, each on a websocket."""


    dataset: datasets.Name = datasets.DEFAULT  # a registered dataset (core/datasets.py): mnist-5k (offline), mnist (download), fashion-mnist
    data_dir: str = "data"  # where downloaded datasets are stored
    seed: int = 0  # seed of each server's batch order (the split has --split-seed)
    speeds: str = ""  # per-server speed ratios, e.g. "1 1 1 4": server i takes ratio_i x its compute time per round (empty = all 1); "halfnormal:0.5" draws each as 1 + |N(0, 0.5)| from --seed (FLSim's half-normal durations)
    compute_s: float = 0.0  # fast regime: a round's training lasts at least this long at speed 1 (an emulated device, FLSim's training duration; --speeds multiply it), seconds; 0 = this machine's own compute
    tcp_cc: str = tcp.DEFAULT_CC  # TCP congestion control of every server socket (cubic: Linux's default, the paper's); any this kernel offers
    faults: Literal["modern", "original"] = "modern"  # original: all of an owner's connections share one queue of received messages, as PySyft 0.2's server did (server/pysyft.py)
    host: str = "127.0.0.1"  # interface to listen on (servers in namespaces listen on their link's address); beyond loopback a token is required
    token: str = ""  # shared secret every connection must present; prefer the ASYNCFL_TOKEN environment variable, which ps does not show
    certfile: str = ""  # TLS certificate (PEM): with --keyfile the servers speak wss://
    keyfile: str = ""  # TLS private key (PEM)
    server_id: int = -1  # start only this one data owner (0..n_servers-1) of the same split, as on its own host; -1 = all of them
    shard: str = ""  # start one data owner on your own data: an .npz with images (uint8 [n, H, W]) and labels (integers [n]) shaped as --dataset's
    port: int = 0  # the port of a single data owner (--server-id or --shard); 0 = base_port + server id
    max_restarts: int = 5  # a server process that dies is restarted on the same port up to this many times (0 = a dead server stops all)
    base_port: int = 8777  # server i listens on base_port + i (0 = pick free ports)
    ready_file: str = ""  # if set, write the servers' addresses here once all listen
    start_timeout_s: float = 120.0  # give up if the servers are not all listening after this many seconds
    die_with_parent: bool = False  # stop (cleanly) when the parent process dies, however it dies (train.sh sets it)
    regime: Literal["fast", "paper"] = "fast"  # fast: rounds as fast as this machine goes; paper: the study's clock (paced rounds, every server in a namespace, TCP's minimum RTO in proportion; see src/asyncfl/core/regime.py)
    time_scale: float = regime_mod.DEFAULT_TIME_SCALE  # --regime paper: K, the paper's durations divided by K (10: its 40-minute runs in 4)
    pace_spread: float = regime_mod.PACE_SPREAD  # --regime paper: the servers' round paces evenly spread over (1 +- this) x the mean pace (0 = all alike), fraction


@dataclass
class ClientArgs(*rules.option_classes()):
    """client/main.py: the model owner; the fields marked [regime] default to the regime's values, and
    each aggregation rule's own options come from its module in core/rules/."""


    servers: str = ""  # comma-separated server addresses (ws://host:port,...); empty = ws://HOST:BASE_PORT+i for each of N_SERVERS
    n_servers: int = 4  # number of data servers (ignored when --servers is given)
    host: str = "127.0.0.1"  # host of the data servers when --servers is empty
    base_port: int = 8777  # server i is at base_port + i when --servers is empty
    staleness_threshold: int = 9999  # S, in rounds: 0 = synchronous, 9999 = asynchronous (the paper's S=inf); the gate for every rule but fedavg
    aggregation: rules.Name = rules.DEFAULT  # how results change the global model (core/rules/): ssp = the study's global += (new-old)/n; fedavg = synchronous rounds averaged by samples; fedasync = mix with a staleness weight; fedbuff = buffered deltas. Each rule's own flags are below
    regime: Literal["fast", "paper"] = "fast"  # fast: this machine's own pace; paper: the study's clock (servers started with --regime paper too); sets the defaults marked [regime]
    time_scale: float = regime_mod.DEFAULT_TIME_SCALE  # --regime paper: K, every duration of the paper divided by K
    duration_s: float | None = None  # [regime] training time in seconds (fast 60; paper 2400/K, its 40 minutes)
    eval_interval_s: float | None = None  # [regime] seconds between time-wise evaluations (fast 15, paper 15/K; fractions allowed)
    eval_every_rounds: int | None = None  # [regime] round-wise evaluation at every k-th advance of the smallest completed round; 0 = the newest advance whenever the evaluator is free (fast 0, paper 1 = every advance, as the paper)
    eval_samples: int | None = None  # [regime] score on a fixed stratified subset of this many test samples (fast 0 = the whole test set, paper 2000)
    dataset: datasets.Name = datasets.DEFAULT  # must match the servers' dataset; its test set scores the model
    data_dir: str = "data"  # where downloaded datasets are stored
    batch_size: int = 32  # samples per batch on the server
    batches_per_round: int = 1  # batches each server trains per round
    lr: float = 0.1  # SGD learning rate on the servers
    shuffle: bool = True  # servers draw batches from a fresh permutation of their shard every epoch
    seed: int = 0  # seed of the initial global model
    out_dir: str = ""  # run folder; empty = out/L<loss>-D<stdev>-S<staleness>-<timestamp>
    profile: bool = True  # per server thread: wall time in the round loop, the remote fit and the SSP gate, into yappi.csv
    profiler: Literal["timers", "yappi"] | None = None  # [regime] timers: three clock reads a round (nothing measurable; fast); yappi: the paper's profiler, every call hooked (about a fifth of the client's CPU in a fast run; paper)
    live: bool = True  # a live status line (rounds, staleness, latest F1) when stdout is a terminal
    verbose: bool = False  # also print every round-wise F1 (they are all in f1_epoch.csv either way)
    connect_timeout_s: float = 60.0  # how long to keep trying to reach each server at start, in seconds
    round_timeout_s: float | None = None  # [regime] a round is abandoned (the server reconnected, the round retried) after this many seconds (fast 60, paper 60/K: the websocket timeout the paper cites)
    timeout_on: Literal["round", "silence"] | None = None  # [regime] what --round-timeout-s bounds: round = the whole round (fast); silence = time without a byte on the socket, the original's websocket timeout (paper)
    die_with_parent: bool = False  # stop (writing the results) when the parent process dies, however it dies (train.sh sets it)
    evaluator_nice: int | None = None  # [regime] niceness added to the evaluator process (fast 0: the time-wise F1 is scored within a second while every core trains; paper 10: its paced servers keep priority)
    eval_cpu_frac: float | None = None  # [regime] largest share of one core the evaluator spends on round-wise snapshots while training runs; time-wise and final snapshots are never held back (fast 0.05; paper 0 = no limit)
    eval_backlog: int = 64  # round-wise snapshots (1.7 MB each) that may wait for a busy evaluator; beyond it new ones are skipped, counted and logged, until it catches up (0 = no limit: memory grows while the evaluator is behind)
    server_timeout_s: float = 0.0  # a server whose round has gone unanswered this many seconds is left out of the SSP minimum so the others go on; it rejoins when it answers (0 = wait for it forever, the paper's SSP)
    token: str = ""  # shared secret the servers require; prefer the ASYNCFL_TOKEN environment variable, which ps does not show (never written to config.json)
    cafile: str = ""  # for wss:// servers with a self-signed certificate: the certificate (PEM) to trust
    tcp_cc: str = tcp.DEFAULT_CC  # TCP congestion control of every connection to a server (cubic: Linux's default, the paper's); any this kernel offers
    wire: Literal["modern", "original"] | None = None  # [regime] how a round crosses the link: modern = one request/reply of binary weights (fast); original = PySyft 0.2.3's seven exchanges of hex text, each under its own --round-timeout-s of silence (paper; net/pysyft.py)
    faults: Literal["modern", "original"] = "modern"  # what a failed round does: modern = back off, reconnect, retry (every error); original = reconnect at once after a timeout, any other error ends that server's thread (the original's train_loop; the servers share one queue per owner)
    shared_memory: bool = True  # weights through shared memory to servers on loopback without emulated network conditions (never in the paper regime: one transport at every L); --no-shared-memory sends them in the frames


@dataclass
class LaunchArgs(ClientArgs, ServerArgs):
    """train.sh (launch/main.py): the data owners and the model owner of one run, with one set of flags."""

    plot: bool = True  # draw run.png (F1 over time, rounds per server) into the run folder at the end; --no-plot skips it
    overwrite: bool = False  # an --out-dir that holds a run (its config.json) is refused unless this is set, which clears it first
    backend: Literal["native", "pysyft"] = "native"  # native: this project's owners and client (Python 3.11); pysyft: the study's own stack, PySyft 0.2.3 websocket workers on torch 1.4 and Python 3.7 (pysyft/; ./setup.sh installs it when a Python 3.7 is found)

    # Set by the launcher itself, not by its user.
    ready_file: tyro.conf.Suppress[str] = ""
    server_id: tyro.conf.Suppress[int] = -1
    shard: tyro.conf.Suppress[str] = ""
    port: tyro.conf.Suppress[int] = 0
    die_with_parent: tyro.conf.Suppress[bool] = False


def problems(args) -> list[str]:
    """Every value of ``args`` (any of the Args above) outside its range, as '--flag: what is allowed (got
    x)'. The entry points print them and exit 2 before anything starts."""
    rules = {
        "n_servers": (lambda v: v >= 1, "at least 1"),
        "min_shard_samples": (lambda v: v >= 0, "not negative"),
        "stdev": (lambda v: v >= 0, "not negative"),
        "time_scale": (lambda v: 1 <= v <= 100, "in [1, 100]"),
        "pace_spread": (lambda v: 0 <= v < 1, "in [0, 1), a fraction of the mean pace"),
        "compute_s": (lambda v: 0 <= v <= 3600, "in [0, 3600] seconds"),
        "duration_s": (lambda v: v is None or v > 0, "positive, in seconds"),
        "eval_interval_s": (lambda v: v is None or v > 0, "positive, in seconds"),
        "round_timeout_s": (lambda v: v is None or v > 0, "positive, in seconds"),
        "eval_every_rounds": (lambda v: v is None or v >= 0, "0 (the newest advance) or a number of rounds"),
        "eval_samples": (lambda v: v is None or v >= 0, "0 (the whole test set) or a number of samples"),
        "server_timeout_s": (lambda v: v >= 0, "0 (off) or seconds"),
        "evaluator_nice": (lambda v: v is None or 0 <= v <= 19, "in [0, 19]"),
        "eval_cpu_frac": (lambda v: v is None or 0 <= v <= 1, "in [0, 1] (0 = no limit)"),
        "eval_backlog": (lambda v: v >= 0, "0 (no limit) or a number of snapshots"),
        "staleness_threshold": (lambda v: v >= 0, "0 (synchronous) or more rounds"),
        "batch_size": (lambda v: 1 <= v <= 65536, "in [1, 65536]"),
        "batches_per_round": (lambda v: 1 <= v <= 100000, "in [1, 100000]"),
        "lr": (lambda v: 0 < v <= 100, "in (0, 100]"),
        "connect_timeout_s": (lambda v: v > 0, "positive, in seconds"),
        "start_timeout_s": (lambda v: v > 0, "positive, in seconds"),
    }
    found = [f"{_flag(name)}: {allowed} (got {getattr(args, name)})" for name, (ok, allowed) in rules.items()
             if hasattr(args, name) and not ok(getattr(args, name))]
    n = getattr(args, "n_servers", 1)
    if hasattr(args, "base_port") and not (args.base_port == 0 or 1 <= args.base_port <= 65536 - max(n, 1)):
        found.append(f"--base-port: 0 (free ports) or a port with --base-port + --n-servers - 1 <= 65535 "
                     f"(got {args.base_port} for {n} servers)")
    if hasattr(args, "port") and not 0 <= args.port <= 65535:
        found.append(f"--port: 0 or a port in [1, 65535] (got {args.port})")
    if n >= 1 and (why := server_limit(n)):
        found.append(why)
    if hasattr(args, "tcp_cc") and (why := tcp.problem(args.tcp_cc)):
        found.append(why)
    if getattr(args, "compute_s", 0) and getattr(args, "regime", "fast") != regime_mod.fast_regime().name:
        found.append("--compute-s: the paper regime sets each round's pace itself (--pace-spread); use --regime fast")
    if hasattr(args, "loss") and not found:  # the data owners' per-server lists, as server/main.py reads them
        for check in (lambda: Links.from_args(args),
                      lambda: parse_speeds(args.speeds, args.n_servers, args.seed)):
            try:
                check()
            except ValueError as e:
                found.append(str(e))
    return found


MAX_SERVERS = 4096  # beyond it the client's --servers list alone nears the kernel's argument limit (ARG_MAX)
FDS_PER_SERVER = 4  # the client's socket per server, and the pipes and files a server process shares with it


def server_limit(n_servers: int) -> str | None:
    """Why this machine cannot run ``n_servers`` data owners (None if it can): the client's open files
    (ulimit -n), the processes this user may have (ulimit -u), the kernel's pid_max."""
    import resource

    files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    procs = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    try:
        pid_max = int(open("/proc/sys/kernel/pid_max").read())
    except (OSError, ValueError):
        pid_max = 1 << 22
    bounds = [(MAX_SERVERS, "one client's list of server addresses would near the kernel's argument limit")]
    if files != resource.RLIM_INFINITY:
        bounds.append(((files - 64) // FDS_PER_SERVER,
                       f"the client needs ~{FDS_PER_SERVER} open files a server and ulimit -n is {files}: raise it (ulimit -n)"))
    if procs != resource.RLIM_INFINITY:
        bounds.append((procs - 64, f"a process a server and ulimit -u is {procs}: raise it (ulimit -u)"))
    bounds.append((pid_max // 2, f"a process a server and the kernel's pid_max is {pid_max} (sysctl kernel.pid_max)"))
    most, why = min(bounds)
    return None if n_servers <= most else f"--n-servers: at most {max(most, 0)} here: {why} (got {n_servers})"


HALFNORMAL = "halfnormal:"


def parse_speeds(text: str, n_servers: int, seed: int = 0) -> list[float]:
    """'1 1 1 4' (spaces or commas) -> [1.0, 1.0, 1.0, 4.0]; empty -> all 1. Ratios below 1 are refused.
    'halfnormal:SD' -> each server's ratio 1 + |N(0, SD)|, drawn once per server from ``seed`` (FLSim's
    PerUserHalfNormalDurationDistribution: a minimum plus a half-normal; docs/rules.md)."""
    if text.strip().startswith(HALFNORMAL):
        try:
            sd = float(text.strip()[len(HALFNORMAL):])
        except ValueError:
            raise ValueError(f"--speeds {text!r}: halfnormal:SD takes a number, e.g. halfnormal:0.5") from None
        if not 0 <= sd <= 100:
            raise ValueError(f"--speeds {text!r}: the half-normal's SD must be in [0, 100]")
        import numpy as np  # here: --help stays instant

        return [round(1.0 + abs(float(x)), 6) for x in np.random.default_rng([seed, 2]).normal(0.0, sd, n_servers)]
    parts = text.replace(",", " ").split()
    if not parts:
        return [1.0] * n_servers
    if len(parts) != n_servers:
        raise ValueError(f"--speeds {text!r} has {len(parts)} values for {n_servers} servers (--n-servers)")
    try:
        speeds = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"--speeds {text!r}: each value is a number, the server's speed ratio (1 = full speed)") from None
    if any(not (1.0 <= s < 1e6) for s in speeds):
        raise ValueError(f"--speeds {text!r}: every speed ratio must be at least 1 (1 = full speed, 4 = four times slower)")
    return speeds


def settle(args: ClientArgs) -> tuple[ClientArgs, regime_mod.Regime]:
    """The arguments with every [regime] field the user left unset filled in from the regime."""
    r = regime_mod.resolve(args.regime, args.time_scale)
    if r.paced:
        args = replace(args, shared_memory=False)
    return replace(args, **{k: v for k, v in r.defaults().items() if getattr(args, k) is None}), r


# train.sh --help, by what a user changes first; each rule's own options join the rules, the rest go last.
LAUNCH_GROUPS = (
    ("study", "the study's variables: S, D, L and the seeds",
     ["staleness_threshold", "stdev", "stdev_units", "loss", "split_seed", "seed"]),
    ("run", "the run", ["regime", "time_scale", "duration_s", "dataset", "n_servers", "speeds", "backend", "out_dir",
                        "overwrite", "plot", "live", "verbose", "eval_interval_s", "eval_samples", "eval_every_rounds"]),
    ("network", "the network: per-server links, TCP, the wire and its faults",
     ["losses", "delays_ms", "rates_mbit", "netns", "tcp_cc", "wire", "faults", "round_timeout_s", "timeout_on",
      "base_port", "host", "servers", "connect_timeout_s"]),
    ("rules", "the aggregation rules and partitions, and what a round trains",
     ["aggregation", *[f.name for c in rules.option_classes() for f in fields(c)], "partition", "alpha_dirichlet",
      "shards_per_server", "batch_size", "batches_per_round", "lr", "shuffle", "server_timeout_s"]),
    ("security", "security", ["token", "certfile", "keyfile", "cafile"]),
)


def _regime_hint(name: str, time_scale: float = regime_mod.DEFAULT_TIME_SCALE) -> str | None:
    """'(default: fast 60; paper 240 at K=10)' for a field the regime sets, from the regime's own defaults."""
    fast = regime_mod.client_defaults("fast", time_scale).get(name)
    paper = regime_mod.client_defaults("paper", time_scale).get(name)
    if fast is None and paper is None:
        return None
    return f"(default: fast {fast:g}; paper {paper:g} at K={time_scale:g})" if isinstance(fast, float) and isinstance(
        paper, float) else f"(default: fast {fast}; paper {paper} at K={time_scale:g})"


def _metavar(hint) -> str | None:
    """The choices of an ``X | None`` field without the None that means "the regime's"."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if len(args) != 1:
        return None
    if typing.get_origin(args[0]) is Literal:
        return "{" + ",".join(map(str, typing.get_args(args[0]))) + "}"
    return args[0].__name__.upper()


def grouped(cls=None, groups=LAUNCH_GROUPS):
    """``cls``'s fields as nested dataclasses, one per group (flags unchanged), for a --help by group;
    ``flatten`` turns what tyro parses back into ``cls``."""
    from tyro._docstrings import get_field_docstring  # the field comments tyro shows for cls itself

    cls = cls or LaunchArgs
    hints = typing.get_type_hints(cls, include_extras=True)
    by_name = {f.name: f for f in fields(cls)}
    named = {n for _, _, names in groups for n in names}
    rest = [n for n in by_name if n not in named]
    outer = []
    for key, title, names in (*groups, ("more", "everything else", rest)):
        members = []
        for n in names:
            f, hint = by_name[n], hints[n]
            extra = {}
            if f.default is None:
                extra = {"help_behavior_hint": _regime_hint(n), "metavar": _metavar(hint)}
            members.append((n, Annotated[hint, tyro.conf.arg(help=get_field_docstring(cls, n, ()), **extra)],
                            field(default=f.default)))
        group = make_dataclass(key, members)
        outer.append((key, Annotated[group, tyro.conf.OmitArgPrefixes, tyro.conf.arg(help=title)],
                      field(default_factory=group)))
    return make_dataclass(cls.__name__, outer)


def flatten(parsed, cls=None):
    cls = cls or LaunchArgs
    return cls(**{k: v for f in fields(parsed) for k, v in vars(getattr(parsed, f.name)).items()})
