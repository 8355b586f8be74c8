"""Benchmark: the same run on both stacks, one after the other, in one sitting: the native backend and
PySyft 0.2.3 (``--backend pysyft``). Fast regime, mnist-5k, 4 owners on loopback, S=9999, no loss.

    .venv/bin/python bench/backends.py                 # 30 s a run, about 1.5 minutes
    .venv/bin/python bench/backends.py --duration-s 60

Prints per backend: rounds per owner, the median round as the model owner saw it (rounds.csv's
``round_s``), aggregate updates per second, each process's CPU share (config.json's ``finished.cpu``,
the kernel's accounting) and the proportional memory (PSS) of an owner and of the model owner,
sampled halfway through the run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def children(pid: int) -> list[int]:
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, timeout=5).stdout
    except OSError:
        return []
    return [int(p) for p in out.split()]


def tree(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children(p)
    return found


def command_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def one(backend: str, duration_s: float, out: Path) -> dict:
    proc = subprocess.Popen(["./train.sh", "--backend", backend, "--duration-s", str(duration_s), "--base-port", "0",
                             "--out-dir", str(out), "--no-live"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + duration_s + 120
    while not (out / "rounds.csv").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)  # the run folder's first round file: training has started
    time.sleep(duration_s / 2)
    memory = {"owner": [], "model owner": []}
    for pid in tree(proc.pid):
        cmd = command_of(pid)
        kind = "owner" if ("syftstudy.owner" in cmd or ("asyncfl.server" in cmd and pid not in (proc.pid,))) else \
            "model owner" if ("syftstudy.model_owner" in cmd or "asyncfl.client" in cmd) else None
        if kind and (mib := pss_mib(pid)) is not None:
            memory[kind].append(mib)
    proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    config = json.loads((out / "config.json").read_text())
    finished = config["finished"]
    rounds = [float(line.split(",")[6]) for line in (out / "rounds.csv").read_text().splitlines()[1:] if line]
    return {"backend": backend, "rounds_per_owner": finished["rounds_per_server"],
            "round_s_median": statistics.median(rounds) if rounds else None,
            "updates_per_s": sum(finished["rounds_per_server"]) / finished["training_s"],
            "cpu_frac": {k: v["cpu_frac"] for k, v in finished["cpu"].items()}, "pss_mib": memory}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=30.0, help="training time of each run, seconds")
    args = parser.parse_args()
    if not (ROOT / ".venv-pysyft" / "bin" / "python").exists():
        print("bench/backends.py: no .venv-pysyft (./setup.sh makes it when a Python 3.7 is found)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        results = [one(b, args.duration_s, Path(tmp) / b) for b in ("native", "pysyft")]
    for r in results:
        mem = {k: f"{min(v):.0f}-{max(v):.0f}" if v else "?" for k, v in r["pss_mib"].items()}
        print(f"{r['backend']:7s} rounds per owner {r['rounds_per_owner']}, median round {r['round_s_median']:.4f} s, "
              f"{r['updates_per_s']:.2f} updates/s; CPU {r['cpu_frac']}; PSS MiB {mem}")
    native, syft = results
    print(f"native / pysyft: updates per second {native['updates_per_s'] / syft['updates_per_s']:.0f}x, "
          f"median round {syft['round_s_median'] / native['round_s_median']:.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
