"""The sweep behind train_batch.sh: every combination of its grid as one train.sh run in one sweep folder,
JOBS at a time here or as one Slurm array; a sweep run again with the same folder resumes.

    ./train_batch.sh [--dry-run]            # the grid is the variables at the top of train_batch.sh
    python -m asyncfl.launch.sweep --help    # the same settings as flags

Runs go repeat by repeat, so a sweep cut short holds whole repeats of the grid. Each run's folder is
named by core/naming.py; its output goes to ``<name>.log`` beside it.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import tyro

from asyncfl.core import rules
from asyncfl.core.naming import run_name
from asyncfl.netem import rootless
from asyncfl.process.runlog import ran_its_course

REPO = Path(__file__).resolve().parents[3]  # train.sh, beside src/
ME = "train_batch.sh"


@dataclass
class SweepArgs:
    """A grid of train.sh runs (train_batch.sh passes its variables here)."""

    losses: str = "0% 10% 20%"  # network loss L on every link, one run per value
    link_sets: str = ""  # more per-server link conditions, one per line, each "losses;delays_ms;rates_mbit"
    stdevs: str = "0 600 10000"  # data imbalance D, in the paper's units (samples of an MNIST class of 6,000)
    staleness: str = "0 6 12 9999"  # SSP staleness threshold S, in rounds
    speed_sets: str = "1 1 1 1"  # per-server speed ratios, one set per line
    rules: str = "ssp"  # aggregation rules, one per line, each "rule [its client flags]"; a rule with its own barrier (fedavg) runs once per cell
    partitions: str = "gaussian"  # splits, one per line, each "partition [its server flags]"; only gaussian uses STDEVS
    repeats: int = 3  # runs per combination (seeds 0, 1, 2, ...)
    n_servers: int = 4  # data servers per run
    regime: str = "fast"  # fast: this machine's pace; paper: the study's clock
    backend: str = "native"  # native: this project's stack; pysyft: the study's own (PySyft 0.2.3 on Python 3.7)
    time_scale: float = 10  # --regime paper: K, every duration of the paper divided by K
    duration_s: str = ""  # training time per run, in seconds (empty: the regime's)
    dataset: str = "mnist-5k"  # a registered dataset (core/datasets.py)
    eval_interval_s: str = ""  # seconds between time-wise evaluations (empty: the regime's)
    split_seed: int = 42  # one split for the whole sweep (the original's seed)
    transport: str = "netns"  # netns: every server in a namespace at every L; loopback: L=0 grids without namespaces
    launcher: str = "local"  # local: run here, JOBS at a time; slurm: one sbatch --array
    jobs: int = 0  # configurations run at once (0 = 1; slurm: 0 = no %limit on the array)
    cpus_per_task: int = 2  # slurm: cores each run asks for
    exclusive: bool = False  # slurm: a whole node per run
    sbatch_args: str = ""  # slurm: more sbatch options, e.g. "--partition=short --time=00:10:00"
    extra_args: str = ""  # more train.sh flags for every run, e.g. "--eval-samples 500"
    sweep_dir: str = ""  # where the run folders go (empty: sweeps/<timestamp>)
    done_in: str = ""  # a results folder analysis.collect fills (e.g. results/rules-real-net): a run collected there is not run again
    dry_run: bool = False  # list the runs without starting them
    slurm_task: int = -1  # set by the array's task script: run line N of SWEEP_DIR/runs.json


@dataclass(frozen=True)
class Run:
    name: str
    args: tuple[str, ...]


def lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def problems(a: SweepArgs) -> list[str]:
    """What is wrong with the grid, named by train_batch.sh's variables."""
    found = [f"{var} is {' or '.join(allowed)}, not {value!r}" for var, value, allowed in (
        ("REGIME", a.regime, ("fast", "paper")), ("TRANSPORT", a.transport, ("netns", "loopback")),
        ("LAUNCHER", a.launcher, ("local", "slurm")), ("BACKEND", a.backend, ("native", "pysyft")))
        if value not in allowed]
    found += [f"{flag} must be a positive integer" for flag, v in (("JOBS", a.jobs + 1), ("REPEATS", a.repeats),
             ("CPUS_PER_TASK", a.cpus_per_task), ("N_SERVERS", a.n_servers)) if v < 1]
    if a.transport == "loopback" and (any(loss.rstrip("%") not in ("0", "") for loss in a.losses.split()) or lines(a.link_sets)):
        found.append("TRANSPORT=loopback cannot emulate LOSSES or LINK_SETS: use TRANSPORT=netns (root)")
    for entry in lines(a.rules):
        if entry.split()[0] not in rules.REGISTRY:
            found.append(f"RULES: unknown rule {entry.split()[0]!r}; choose from {' '.join(rules.NAMES)}")
    return found


def link_flags(link: str, link_sets: list[str]) -> list[str]:
    """train.sh's flags for a link entry: 'L20' (one loss) or 'links<k>' (LINK_SETS' k-th entry)."""
    if link.startswith("L"):
        return ["--loss", link[1:] + "%"]
    values = [v.strip() for v in link_sets[int(link[5:])].split(";")]
    return [x for flag, v in zip(("--losses", "--delays-ms", "--rates-mbit"), values) for x in (flag, v)]


def pinned(rule: str) -> tuple[str, str | None]:
    """A RULES entry may pin its own S ("fedasync --staleness-threshold 9999 --alpha 0.6": an asynchronous
    rule run only asynchronously): the entry without that flag, and the S (None: the grid's)."""
    words = rule.split()
    if "--staleness-threshold" not in words:
        return rule, None
    at = words.index("--staleness-threshold")
    return " ".join(words[:at] + words[at + 2:]), words[at + 1]


def grid(a: SweepArgs) -> list[Run]:
    """Every run of the grid, repeat by repeat, with its train.sh flags. Only gaussian splits take every
    D (the others the first); a rule with a barrier of its own runs at S=0 only, a rule entry that pins
    its S at that S only."""
    link_sets, stdevs = lines(a.link_sets), a.stdevs.split()
    links = [f"L{loss.rstrip('%')}" for loss in a.losses.split()] + [f"links{k}" for k in range(len(link_sets))]
    fixed = ["--netns", "always" if a.transport == "netns" else "never", "--no-shared-memory",
             "--regime", a.regime, "--time-scale", f"{a.time_scale:g}", "--backend", a.backend,
             *(["--duration-s", a.duration_s] if a.duration_s else []),
             *(["--eval-interval-s", a.eval_interval_s] if a.eval_interval_s else []),
             "--dataset", a.dataset, "--n-servers", str(a.n_servers), "--stdev-units", "paper",
             "--split-seed", str(a.split_seed), "--base-port", "0", "--no-live"]
    runs = []
    for rep, link, part, stdev, speeds, rule, s in itertools.product(
            range(a.repeats), links, lines(a.partitions), stdevs, lines(a.speed_sets), lines(a.rules), a.staleness.split()):
        rule, pin = pinned(rule)
        once = pin is not None or not rules.get(rule.split()[0]).has_threshold
        if (part.split()[0] != "gaussian" and stdev != stdevs[0]) or (once and s != a.staleness.split()[0]):
            continue
        s = pin if pin is not None else s if rules.get(rule.split()[0]).has_threshold else "0"
        name = run_name(link[1:] if link.startswith("L") else link, stdev, int(s), speeds=speeds, repeat=rep,
                        rule=rule, partition=part)
        args = [*link_flags(link, link_sets), *fixed, "--stdev", stdev, "--staleness-threshold", s,
                "--partition", *part.split(), "--aggregation", *rule.split(), "--speeds", speeds,
                "--seed", str(rep), *shlex.split(a.extra_args)]
        runs.append(Run(name, tuple(args)))
    return runs


def summary(run_dir: Path) -> str:
    """One line on a finished run: final F1, rounds, staleness, abandoned rounds, CPU shares."""
    config = json.loads((run_dir / "config.json").read_text())
    f = config["finished"]
    final = (run_dir / "f1_time.csv").read_text().strip().splitlines()[-1].split(",")
    cpu = ", ".join(f"{n} {100 * s['cpu_frac']:.0f}%" for n, s in f.get("cpu", {}).items())
    warn = f"; STARVED: {', '.join(f['starved'])}" if f.get("starved") else ""
    return (f"  {run_dir.name}: final f1 {final[1]} at {final[0]} s; rounds {f['rounds_per_server']}, largest staleness "
            f"{max(f['max_staleness_per_server'])}, abandoned {sum(f['retries_per_server'])}; cpu {cpu}{warn}")


def jobs_now(sweep: Path, jobs: int) -> int:
    """How many runs may run at once: ``jobs``, or the number in SWEEP_DIR/jobs while that file exists (so a
    long sweep can make room, or take more, without stopping the runs under way)."""
    try:
        return max(int((sweep / "jobs").read_text().strip()), 1)
    except (OSError, ValueError):
        return max(jobs, 1)


def run_local(a: SweepArgs, sweep: Path, runs: list[Run]) -> int:
    """Run the unfinished runs here, ``jobs`` at a time (see jobs_now); 130 when interrupted, 1 when any failed."""
    done: queue.Queue = queue.Queue()
    running: dict[str, subprocess.Popen] = {}
    failed, interrupted = 0, False

    def stop(signum, frame):
        nonlocal interrupted
        interrupted = True
        for proc in running.values():
            proc.terminate()
        done.put(None)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)

    def reap() -> None:
        nonlocal failed
        item = done.get()
        if item is None:
            return
        name, status = item
        running.pop(name)
        if interrupted or status in (130, -signal.SIGINT, -signal.SIGTERM):
            return
        if status != 0:
            failed += 1
            print(f"  {name} failed (exit {status}); see {sweep / name}.log", flush=True)
        else:
            print(summary(sweep / name), flush=True)

    for i, run in enumerate(runs):
        if interrupted:
            break
        print(f"[{i + 1}/{len(runs)}] {run.name}", flush=True)
        if ran_its_course(sweep / run.name) or (a.done_in and ran_its_course(Path(a.done_in) / "runs" / run.name)):
            print("  done already", flush=True)
            continue
        if a.dry_run:
            continue
        shutil.rmtree(sweep / run.name, ignore_errors=True)  # what an interrupted attempt left
        while len(running) >= jobs_now(sweep, a.jobs) and not interrupted:
            reap()
        if interrupted:
            break
        with open(sweep / f"{run.name}.log", "wb") as log:
            proc = subprocess.Popen([str(REPO / "train.sh"), *run.args, "--out-dir", str(sweep / run.name)],
                                    stdout=log, stderr=subprocess.STDOUT)
        running[run.name] = proc
        threading.Thread(target=lambda n=run.name, p=proc: done.put((n, p.wait())), daemon=True).start()
    while running and not interrupted:
        reap()
    for proc in running.values():  # a run started as the signal came in is stopped too
        if interrupted:
            proc.terminate()
        proc.wait()
    if interrupted:
        print(f"{ME}: interrupted; run again with SWEEP_DIR={sweep} to resume", flush=True)
        return 130
    if a.dry_run:
        return 0
    print(f"{ME}: done, {failed} failed; results in {sweep}")
    configs = [json.loads((sweep / r.name / "config.json").read_text()) for r in runs
               if (sweep / r.name / "config.json").is_file()]
    starved = [c for c in configs if c.get("finished", {}).get("starved")]
    if starved:
        print(f"{ME}: warning: in {len(starved)} of {len(configs)} runs a process waited for a core >= 5% of the time: "
              "runs disturbed each other or the machine was busy (lower JOBS; see finished.cpu in config.json)")
    return 0 if failed == 0 else 1


def submit_slurm(a: SweepArgs, sweep: Path, runs: list[Run]) -> int:
    """One array task per unfinished run; each task runs ``--slurm-task N`` (the sweep folder, this
    repository and its .venv must be on a filesystem the compute nodes share)."""
    for i, run in enumerate(runs):
        print(f"[{i + 1}/{len(runs)}] {run.name}")
    if a.dry_run:
        return 0
    pending = [r for r in runs if not ran_its_course(sweep / r.name)]
    if not pending:
        print(f"{ME}: every run has finished already")
        return 0
    (sweep / "runs.txt").write_text("".join(json.dumps({"name": r.name, "args": r.args}) + "\n" for r in pending))
    task = sweep / "slurm-task.sh"
    task.write_text("#!/usr/bin/env bash\n# One task of the array train_batch.sh submitted: the run on line "
                    "SLURM_ARRAY_TASK_ID + 1 of runs.txt.\n"
                    f"exec {shlex.quote(sys.executable)} -m asyncfl.launch.sweep --sweep-dir {shlex.quote(str(sweep))} "
                    '--slurm-task "$SLURM_ARRAY_TASK_ID"\n')
    task.chmod(0o755)
    limit = f"%{a.jobs}" if a.jobs else ""
    cmd = ["sbatch", "--parsable", "--job-name=asyncfl-sweep", f"--array=0-{len(pending) - 1}{limit}",
           f"--cpus-per-task={a.cpus_per_task}", *(["--exclusive"] if a.exclusive else []),
           f"--output={sweep}/slurm-%A_%a.out", *shlex.split(a.sbatch_args), str(task)]
    job = subprocess.run(cmd, capture_output=True, text=True)
    if job.returncode != 0:
        print(f"{ME}: sbatch failed: {job.stderr.strip()}", file=sys.stderr)
        return 1
    job_id = job.stdout.strip().split(";")[0]
    print(f"{ME}: submitted {len(pending)} runs as Slurm array job {job_id} ({a.cpus_per_task} cores each); watch: "
          f"squeue -j {job_id}; then: {sys.executable} -m asyncfl.analysis.analyze {sweep}; resubmit the same "
          "command to finish what failed")
    return 0


def slurm_task(sweep: Path, index: int) -> int:
    """The array task ``index``: its run, unless finished already."""
    line = json.loads((sweep / "runs.txt").read_text().splitlines()[index])
    name, args = line["name"], [str(x) for x in line["args"]]
    if ran_its_course(sweep / name):
        print(f"{name}: done already")
        return 0
    shutil.rmtree(sweep / name, ignore_errors=True)
    print(f"{name} on {os.uname().nodename}, {os.environ.get('SLURM_CPUS_PER_TASK', '?')} cores", flush=True)
    with open(sweep / f"{name}.log", "wb") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    os.chdir(REPO)
    os.execv(str(REPO / "train.sh"), [str(REPO / "train.sh"), *args, "--out-dir", str(sweep / name)])


def main(a: SweepArgs) -> int:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `./train_batch.sh --dry-run | head` ends quietly
    if a.slurm_task >= 0:
        return slurm_task(Path(a.sweep_dir).resolve(), a.slurm_task)
    if bad := problems(a):
        print(f"{ME}: " + f"\n{ME}: ".join(bad), file=sys.stderr)
        return 2
    if a.launcher == "slurm" and not a.dry_run and subprocess.run(["sh", "-c", "command -v sbatch"],
                                                                   capture_output=True).returncode != 0:
        print(f"{ME}: LAUNCHER=slurm needs sbatch (Slurm's client tools) on this machine", file=sys.stderr)
        return 2
    if os.geteuid() != 0 and a.transport == "netns" and not a.dry_run and (why := rootless.unavailable()):
        print(f"{ME}: TRANSPORT=netns puts every server in a network namespace: that needs root or user namespaces, "
              f"and {why}; or TRANSPORT=loopback LOSSES=0% for a grid without loss", file=sys.stderr)
        return 2
    sweep = Path(a.sweep_dir or f"sweeps/{datetime.now():%Y%m%d-%H%M%S}").resolve()  # train.sh runs from its own folder
    runs = grid(a)
    seconds = float(a.duration_s) if a.duration_s else (2400 / a.time_scale if a.regime == "paper" else 60)
    regime = f"{a.regime} regime" + (f" K={a.time_scale:g}" if a.regime == "paper" else "")
    print(f"{ME}: {len(runs)} runs of {seconds:g} s each, {regime} on {a.dataset} (D in the paper's units), transport "
          f"{a.transport}, split seed {a.split_seed}, {max(a.jobs, 1)} at a time, into {sweep}")
    if a.dataset == "mnist-5k":
        print(f"{ME}: mnist-5k has 400 samples a class: D=600 splits as 40, D=10000 as 667")
    if not a.dry_run:
        sweep.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    return (submit_slurm if a.launcher == "slurm" else run_local)(a, sweep, runs)


if __name__ == "__main__":
    sys.exit(main(tyro.cli(SweepArgs, prog="./train_batch.sh", description=__doc__)))
