"""What a run writes about itself: the run folder's name, config.json's records (``start_record`` at the
start; training.py adds ``finished``), and how it is written.

The CSVs are written row by row by runlog.CsvLog (rounds.csv and events.csv here, with their headers);
config.json is written whole at the start and again at the end (``write_json`` replaces it atomically).
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict
from datetime import datetime
from importlib.metadata import version

from asyncfl.client.remote import RemoteServer
from asyncfl.core import regime as regime_mod
from asyncfl.core.naming import single_run_dir
from asyncfl.net import tcp
from asyncfl.process import cpu, runlog


def redacted(args) -> dict:
    """The arguments as config.json records them: the token never leaves the process."""
    return {**asdict(args), "token": "<set>" if args.token else ""}


def default_out_dir(infos: list[dict], rule) -> str:
    loss = infos[0].get("network", {}).get("loss_pct", 0)
    split = infos[0].get("split", {})
    stdev = split.get("stdev")  # none for owners serving their own data
    return single_run_dir(f"{loss:g}", stdev, rule.staleness, rule.name, split.get("partition", "gaussian"))


def transport_record(infos: list[dict], remotes: list[RemoteServer]) -> dict:
    """How the weights travel to each server: one transport for every run of a comparison."""
    nets = [info.get("network", {}) for info in infos]
    kinds = sorted({"netns" if n.get("netns") else "loopback" for n in nets})
    via = sorted({w.weights_via for w in remotes})
    return {"kind": "+".join(kinds) + " " + "+".join(via), "netns": [bool(n.get("netns")) for n in nets],
            "rto_min_ms": [n.get("rto_min_ms", 0.0) for n in nets]}


def tcp_record(requested: str, infos: list[dict], remotes: list[RemoteServer]) -> dict:
    """The congestion control asked for and what each live socket uses, at both ends (the servers' from
    their hello), with the loss-recovery sysctls of the client's namespace and of each server's."""
    return {"cc": requested, "client_cc": [w.live_congestion() for w in remotes],
            "server_cc": [(info.get("tcp") or {}).get("cc") for info in infos],
            "client_sysctl": tcp.sysctls(), "server_sysctl": [(info.get("tcp") or {}).get("sysctl") for info in infos]}


def local_processes(infos: list[dict], evaluator_pid: int) -> dict[str, int]:
    """The run's processes on this machine whose CPU time can be read: this one, the evaluator and the
    servers that report this machine's boot id."""
    procs = {"client": os.getpid(), "evaluator": evaluator_pid}
    me = cpu.boot_id()
    for info in infos:
        if me is not None and info.get("boot_id") == me and isinstance(info.get("pid"), int):
            procs[str(info.get("server"))] = info["pid"]
    return procs


def versions() -> dict:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("torch", "numpy", "safetensors", "scikit-learn", "yappi"):
        out[pkg] = version(pkg)
    out["asyncfl_git"] = runlog.git_commit()
    return out


def start_record(args, regime, uris: list[str], rule, token: str | None, train_config,
                 infos: list[dict], remotes: list[RemoteServer]) -> dict:
    """config.json as written when training starts: the settings, the servers as they introduced
    themselves, how they are reached, and the versions of everything."""
    return {
        "args": redacted(args),
        "servers": uris,
        "aggregation": rule.describe(),
        "staleness_threshold": rule.staleness,  # the gate's S as used (fedavg: 0)
        "security": {"token": token is not None, "tls": [u.startswith("wss://") for u in uris], "cafile": args.cafile},
        "n_servers": len(remotes),
        "train_config": train_config.to_dict(),
        "server_info": infos,
        "regime": regime_mod.regime_record(regime, infos),
        "transport": transport_record(infos, remotes),
        "tcp": tcp_record(args.tcp_cc, infos, remotes),
        "weights_via": [w.weights_via for w in remotes],  # per server: "websocket" or "shared memory"
        "dataset": infos[0].get("split", {}),
        "shard_fingerprints": [info.get("shard_fingerprint") for info in infos],  # what each owner says it holds
        "versions": versions(),
        "started_at": datetime.now().isoformat(timespec="seconds"),
    }
