"""Soak: one long run through train.sh, the resident memory of every process it started sampled at a fixed
interval into the run folder, then a verdict on growth, progress and the files' integrity.

    .venv/bin/python bench/soak.py --out-dir out/soak-default                                  # 60 min, defaults
    .venv/bin/python bench/soak.py --out-dir out/soak-l20-s0 "--train-args=--loss 20% --staleness-threshold 0"

Writes, next to the run's own files, ``rss.csv`` (time_s,process,pid,rss_kib; one row per process and
sample, flushed as it goes) and ``soak.json``: per process the RSS at the end of start-up and at the end,
and the slope of a least-squares line through the samples after ``--settle-s`` (MB per minute); the run's
rounds (and the fewest and most in any minute), events and stop reason; whether every CSV is whole (each row has the header's fields, the file
ends with a newline). It passes when every slope is under ``--max-slope-mb-per-min``, the run stopped on
its duration, and every CSV is whole (exit 0, else 1).
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

from asyncfl.process.cpu import rss_kib

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Args:
    out_dir: str = "out/soak"  # the run folder (train.sh's --out-dir)
    duration_s: float = 3600.0  # training time, seconds
    interval_s: float = 60.0  # seconds between RSS samples
    settle_s: float = 300.0  # start-up: samples before this many seconds are left out of the slope
    max_slope_mb_per_min: float = 1.0  # growth allowed per process, MB per minute
    train_args: str = ""  # more train.sh flags, given as --train-args="--loss 20% --staleness-threshold 0"


def process_tree(root: int) -> list[int]:
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return out


def label(pid: int, parents: dict[int, int], cmdlines: dict[int, str]) -> str:
    """client, evaluator, servers (server/main.py), server (a data owner it forked), launcher or other."""
    cmd, parent_cmd = cmdlines.get(pid, ""), cmdlines.get(parents.get(pid, -1), "")
    for module in ("client", "servers"):
        if f"asyncfl.{module}" in cmd:
            if f"asyncfl.{module}" in parent_cmd:  # forked: same command line as its parent
                return "evaluator" if module == "client" else "server"
            return module
    return "launcher" if "asyncfl.launch" in cmd else "other"


def sample(root: int) -> list[tuple[str, int, int]]:
    rows, parents, cmdlines = [], {}, {}
    for pid in process_tree(root):
        try:
            cmdlines[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            stat = Path(f"/proc/{pid}/stat").read_text()
            parents[pid] = int(stat.rsplit(")", 1)[1].split()[1])
            rss = rss_kib(pid)
        except (OSError, KeyError):
            continue
        rows.append((pid, rss))
    return [(label(pid, parents, cmdlines), pid, rss) for pid, rss in rows]


def csv_whole(path: Path) -> bool:
    text = path.read_text()
    if text and not text.endswith("\n"):
        return False
    rows = list(csv.reader(text.splitlines()))
    return bool(rows) and all(len(r) == len(rows[0]) for r in rows)


def main(args: Args) -> int:
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cmd = [str(ROOT / "train.sh"), "--duration-s", str(args.duration_s), "--out-dir", str(out), "--no-live",
           *shlex.split(args.train_args)]
    log = open(out / "soak.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    t0 = time.monotonic()
    samples: list[tuple[float, str, int, int]] = []
    try:
        with open(out / "rss.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["time_s", "process", "pid", "rss_kib"])
            k = 0
            while proc.poll() is None:
                now = time.monotonic() - t0
                for name, pid, rss in sample(proc.pid):
                    if name != "other":
                        samples.append((now, name, pid, rss))
                        writer.writerow([round(now, 1), name, pid, rss])
                f.flush()
                k += 1
                deadline = t0 + k * args.interval_s
                while proc.poll() is None and time.monotonic() < deadline:
                    time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    except KeyboardInterrupt:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
    finally:
        log.close()
    report = summarize(args, out, samples, proc.returncode)
    (out / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if report["passed"] else 1


def summarize(args: Args, out: Path, samples: list, returncode: int | None) -> dict:
    per: dict[str, dict] = {}
    for name, pid in sorted({(s[1], s[2]) for s in samples}):
        pts = [(t, rss) for t, n, p, rss in samples if (n, p) == (name, pid)]
        settled = [(t, rss) for t, rss in pts if t >= args.settle_s]
        slope = None
        if len(settled) >= 3:
            t, rss = np.array(settled, dtype=float).T
            slope = float(np.polyfit(t / 60.0, rss / 1024.0, 1)[0])  # MB per minute
        per[f"{name}-{pid}"] = {"samples": len(pts), "rss_mib_settled": round(settled[0][1] / 1024, 1) if settled else None,
                                "rss_mib_end": round(pts[-1][1] / 1024, 1),
                                "slope_mb_per_min": None if slope is None else round(slope, 3)}
    config = json.loads((out / "config.json").read_text()) if (out / "config.json").exists() else {}
    finished = config.get("finished", {})
    events: dict[str, int] = {}
    if (out / "events.csv").exists():
        for row in csv.DictReader(open(out / "events.csv")):
            events[row["event"]] = events.get(row["event"], 0) + 1
    per_minute = np.zeros(int(args.duration_s // 60) or 1, dtype=int)
    if (out / "rounds.csv").exists():  # progress minute by minute: a deadlock shows as minutes without rounds
        for row in csv.DictReader(open(out / "rounds.csv")):
            per_minute[min(int(float(row["time_s"]) // 60), len(per_minute) - 1)] += 1
    whole = {p.name: csv_whole(p) for p in sorted(out.glob("*.csv"))}
    slopes = [v["slope_mb_per_min"] for v in per.values() if v["slope_mb_per_min"] is not None]
    passed = (returncode == 0 and finished.get("stop_reason") == "duration" and all(whole.values())
              and bool(slopes) and max(slopes) < args.max_slope_mb_per_min)
    return {"command": " ".join(sys.argv), "train_args": args.train_args, "duration_s": args.duration_s,
            "returncode": returncode, "stop_reason": finished.get("stop_reason"),
            "rounds_per_server": finished.get("rounds_per_server"), "updates": finished.get("updates"),
            "rounds_per_minute_min_max": [int(per_minute.min()), int(per_minute.max())],
            "events": events, "csv_whole": whole, "processes": per, "passed": passed}


if __name__ == "__main__":
    sys.exit(main(tyro.cli(Args, prog="bench/soak.py", description=__doc__)))
