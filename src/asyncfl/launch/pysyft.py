"""``--backend pysyft``: one run of the study on its own stack, PySyft 0.2.3 with torch 1.4 on Python 3.7.

    ./train.sh --backend pysyft --regime paper --loss 20% --staleness-threshold 0

This side does what the native launcher does before and after the processes run: the split (the same
shards, the same fingerprints), the initial model and the test subset the native evaluator scores, the
network namespaces and their loss, rate and minimum RTO. The data owners and the model owner are the
Python 3.7 programs in pysyft/syftstudy (owner.py, model_owner.py), run by .venv-pysyft's interpreter,
each owner inside its namespace; they leave the run's CSVs and pysyft_run.json in the run folder, and
config.json is written here from them, in the native schema plus ``backend``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from datetime import datetime
from pathlib import Path

import numpy as np

from asyncfl.core import data, datasets, rules, schema
from asyncfl.core import regime as regime_mod
from asyncfl.core.conditions import Links
from asyncfl.core.model import initial_weights
from asyncfl.core.protocol import TrainConfig
from asyncfl.core.split import SplitRefused, make_split, shard_fingerprint
from asyncfl.core.task import eval_set
from asyncfl.net import tcp
from asyncfl.netem import lab as netem
from asyncfl.process import runlog
from asyncfl.process.runlog import write_json
from asyncfl.settings import LaunchArgs, parse_speeds, settle

ROOT = Path(__file__).resolve().parents[3]
PROGRAMS = ROOT / "pysyft"  # the Python 3.7 package syftstudy
PYTHON = ROOT / ".venv-pysyft" / "bin" / "python"
NAME = "pysyft"


def refusal(args: LaunchArgs) -> str | None:
    """Why these settings cannot run on PySyft 0.2.3's stack (None if they can): what the study's own
    client did not have stays native-only."""
    if not PYTHON.exists():
        return (f"--backend pysyft needs {PYTHON.relative_to(ROOT)}: ./setup.sh makes it when a Python 3.7 is found "
                "(pyenv install 3.7, or PYTHON37=/path/to/python3.7 ./setup.sh)")
    checks = [(args.aggregation != "ssp", "--aggregation: the study's client had only ssp"),
              (bool(args.servers), "--servers: owners elsewhere run the native backend"),
              (bool(args.certfile or args.keyfile), "--certfile/--keyfile: TLS is the native backend's"),
              (args.server_timeout_s > 0, "--server-timeout-s: the study's gate waited forever")]
    return next((f"--backend pysyft: {why}" for bad, why in checks if bad), None)


def _uint8(x: np.ndarray) -> np.ndarray:
    return x if x.dtype == np.uint8 else x.astype(np.uint8)


class Processes:
    """The 3.7 processes of one run and how they stop."""

    def __init__(self):
        self.owners: list[subprocess.Popen] = []
        self.client: subprocess.Popen | None = None
        self.stopping = False

    def on_signal(self, signum, frame) -> None:
        self.stopping = True
        if self.client is not None and self.client.poll() is None:
            self.client.send_signal(signal.SIGTERM)

    def close(self) -> None:
        for p in [self.client, *self.owners]:
            if p is not None and p.poll() is None:
                p.terminate()
        for p in [self.client, *self.owners]:
            if p is not None:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def _wait_ready(procs: Processes, ready: list[Path], log: Path, timeout_s: float) -> list[dict] | int:
    """Each owner's ready record (port, pid, congestion control) once all listen, or an exit status."""
    deadline = time.monotonic() + timeout_s
    while not all(r.exists() for r in ready):
        if procs.stopping:
            return 130
        dead = [i for i, p in enumerate(procs.owners) if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            why = f"server-{dead[0]} exited with code {procs.owners[dead[0]].returncode}" if dead else \
                f"not all owners listened within {timeout_s:g} s"
            tail = log.read_text(errors="replace").splitlines()[-5:] if log.exists() else []
            print(f"train.sh: the pysyft owners failed to start ({why}):", *tail, sep="\n", file=sys.stderr)
            return 1
        time.sleep(0.05)
    return [json.loads(r.read_text()) for r in ready]


def run(args: LaunchArgs, out_dir: Path) -> int:
    """The whole run; the exit status is the model owner's (0 done, 130 interrupted, 1 failed, 2 refused)."""
    cargs, regime = settle(args)
    try:
        rule = rules.build(cargs, args.n_servers)
        ds = data.load(args.dataset, args.data_dir)
        shards, split = make_split(args, ds.train_labels, ds.n_classes, ds.name, ds.source)
    except (SplitRefused, ValueError, OSError, data.DatasetUnavailable) as e:
        print(f"train.sh: {e}", file=sys.stderr)
        return 2
    n = args.n_servers
    speeds = parse_speeds(args.speeds, n, args.seed)
    server_regime = regime_mod.resolve(args.regime, args.time_scale, args.pace_spread)
    paces = server_regime.paces(np.random.default_rng([args.seed, 1]), n, args.compute_s)
    links_wanted = Links.from_args(args)
    work = out_dir / NAME
    work.mkdir(exist_ok=True)
    for stale in work.glob("*.ready"):
        stale.unlink()
    np.savez(work / "test.npz", **dict(zip(("images", "labels"), (_uint8(a) for a in eval_set(ds, cargs.eval_samples)))))
    np.savez(work / "initial.npz", **{k: v.numpy() for k, v in initial_weights(args.seed, args.dataset).items()})
    procs, lab = Processes(), netem.NetworkLab()
    signal.signal(signal.SIGINT, procs.on_signal)
    signal.signal(signal.SIGTERM, procs.on_signal)
    try:
        try:
            links = lab.create(list(links_wanted.per_server), server_regime.rto_min_ms) \
                if links_wanted.in_namespaces() else []
        except netem.NetemError as e:
            print(f"train.sh: {e}; nothing was started", file=sys.stderr)
            return 2
        hosts = [link.ns_addr for link in links] or [args.host] * n
        start_owners(args, procs, work, ds, shards, hosts, links, paces, speeds, out_dir / schema.SERVERS_LOG)
        owners = _wait_ready(procs, [work / f"server-{i}.ready" for i in range(n)], out_dir / schema.SERVERS_LOG,
                             args.start_timeout_s)
        if isinstance(owners, int):
            return owners
        infos = [{"server": f"server-{i}", "dataset_key": ds.name, "n_samples": int(len(shards[i])),
                  "class_counts": np.bincount(ds.train_labels[shards[i]], minlength=ds.n_classes).tolist(),
                  "speed_ratio": speeds[i], "pace_s": paces[i], "pid": owners[i]["pid"], "index": i,
                  "network": links[i].describe() if links else {"netns": None, "address": hosts[i],
                                                                 **asdict(links_wanted.per_server[i]), "mechanism": {}},
                  "shard_fingerprint": shard_fingerprint(split, i), "regime": args.regime,
                  "tcp": {"cc": owners[i]["cc"]}} for i in range(n)]
        client = client_spec(args, cargs, regime, rule, ds, work, out_dir, hosts, owners)
        write_json(work / "client.json", client)
        config = run_config(args, cargs, regime, rule, split, infos, hosts, owners, links)
        write_json(out_dir / schema.CONFIG, config)
        print(f"train.sh: run folder {out_dir}; {n} PySyft owners, S={client['staleness_threshold']}, "
              f"{cargs.duration_s:g} s", flush=True)
        procs.client = subprocess.Popen([str(PYTHON), "-m", "syftstudy.model_owner", str(work / "client.json")],
                                        env=_env(), start_new_session=True)
        return finish(out_dir, config, procs.client.wait(), lab)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        procs.close()
        lab.close()


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(PROGRAMS), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def start_owners(args: LaunchArgs, procs: Processes, work: Path, ds, shards, hosts, links, paces, speeds,
                 log: Path) -> None:
    """One PySyft owner process per shard (in its namespace if it has a link), each told its shard, pace
    and ready file in ``work/server-i.json``; their output goes to ``log``."""
    spec = datasets.get(args.dataset)
    with open(log, "w") as log_file:
        for i in range(args.n_servers):
            np.savez(work / f"shard-{i}.npz", images=_uint8(ds.train_images[shards[i]]),
                     labels=ds.train_labels[shards[i]].astype(np.int64))
            owner = {"name": f"server-{i}", "index": i, "host": hosts[i], "port": args.base_port + i if args.base_port else 0,
                     "shard": str(work / f"shard-{i}.npz"), "dataset_key": ds.name, "mean": spec.mean,
                     "std": spec.std, "pace_s": paces[i], "speed_ratio": speeds[i], "tcp_cc": args.tcp_cc,
                     "seed": args.seed * 1000 + i, "ready_file": str(work / f"server-{i}.ready"),
                     "fits_log": str(work / f"server-{i}.fits.csv")}
            write_json(work / f"server-{i}.json", owner)
            cmd = [str(PYTHON), "-m", "syftstudy.owner", str(work / f"server-{i}.json")]
            if links:
                cmd = ["ip", "netns", "exec", links[i].netns, *cmd]
            procs.owners.append(subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=_env(),
                                                 start_new_session=True))
    print(f"train.sh: starting {args.n_servers} PySyft 0.2.3 owners (log: {log})", flush=True)


def client_spec(args: LaunchArgs, cargs, regime, rule, ds, work: Path, out_dir: Path, hosts, owners) -> dict:
    """What the PySyft model owner (syftstudy/model_owner.py) is told: owners, rule, clock, task."""
    spec, n = datasets.get(args.dataset), args.n_servers
    return {"servers": [{"host": hosts[i], "port": owners[i]["port"]} for i in range(n)],
            "server_pids": {f"server-{i}": owners[i]["pid"] for i in range(n)},
            "staleness_threshold": rule.staleness,
            "duration_s": cargs.duration_s, "eval_interval_s": cargs.eval_interval_s,
            "eval_every_rounds": cargs.eval_every_rounds,
            "timeout_s": regime.round_timeout_s,  # PySyft's TIMEOUT_INTERVAL (60 s), / K in the paper regime
            "tcp_cc": args.tcp_cc,
            "dataset_key": ds.name, "batch_size": args.batch_size, "batches_per_round": args.batches_per_round,
            "shuffle": args.shuffle, "lr": args.lr, "initial_weights": str(work / "initial.npz"),
            "test_set": str(work / "test.npz"), "mean": spec.mean, "std": spec.std,
            "image_shape": list(spec.image_shape), "n_classes": ds.n_classes, "out_dir": str(out_dir),
            "evaluator_nice": cargs.evaluator_nice or 0, "connect_timeout_s": args.connect_timeout_s}


def run_config(args: LaunchArgs, cargs, regime, rule, split, infos, hosts, owners, links) -> dict:
    """config.json as the native backend writes it, the wire and faults named PySyft's own."""
    n = args.n_servers
    return {
        "backend": NAME,
        # The wire and the faults are PySyft's own, whatever the regime's defaults for the native backend.
        "args": {**asdict(replace(cargs, wire=None, faults="modern")), "wire": NAME, "faults": NAME,
                 "token": ""},
        "servers": [f"ws://{hosts[i]}:{owners[i]['port']}" for i in range(n)],
        "aggregation": rule.describe(),
        "staleness_threshold": rule.staleness,
        "security": {"token": False, "tls": [False] * n, "cafile": ""},
        "n_servers": n,
        "train_config": TrainConfig(args.batch_size, args.batches_per_round, args.lr, args.shuffle).to_dict(),
        "server_info": infos,
        "regime": regime_mod.regime_record(regime, infos),
        "transport": {"kind": ("netns" if links else "loopback") + " websocket", "netns": [bool(links)] * n,
                      "rto_min_ms": [link.rto_min_ms for link in links] or [0.0] * n},
        "tcp": {"cc": args.tcp_cc, "client_cc": [args.tcp_cc] * n, "server_cc": [o["cc"] for o in owners],
                "client_sysctl": tcp.sysctls()},
        "weights_via": ["websocket"] * n,
        "dataset": split,
        "shard_fingerprints": [info["shard_fingerprint"] for info in infos],
        "versions": {"launcher_python": sys.version.split()[0], "asyncfl_git": runlog.git_commit()},
        "started_at": datetime.now().isoformat(timespec="seconds"),
    }


def finish(out_dir: Path, config: dict, code: int, lab) -> int:
    """config.json's ``finished``, from the model owner's own record (pysyft_run.json) if it wrote one."""
    record = out_dir / "pysyft_run.json"
    if record.exists():
        done = json.loads(record.read_text())
        config["finished"], config["versions"] = done["finished"], {**done["versions"], **config["versions"]}
    else:
        config["finished"] = {"stop_reason": "error", "errors": [f"the model owner exited with code {code}"]}
    config["finished"]["dropped_packets"] = lab.dropped()
    write_json(out_dir / schema.CONFIG, config)
    if not record.exists():
        print(f"train.sh: the PySyft model owner failed (exit {code})", file=sys.stderr)
        return 1
    print(f"train.sh: done; plot it with: .venv/bin/python -m asyncfl.analysis.plot {out_dir}", flush=True)
    return code
