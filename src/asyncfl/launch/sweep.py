"""The sweep behind train_batch.sh: every combination of its grid as one train.sh run in one sweep folder,
JOBS at a time here or as one Slurm array; a sweep run again with the same folder resumes.

    ./train_batch.sh [--dry-run]            # the grid is the variables at the top of train_batch.sh
    python -m asyncfl.launch.sweep --help    # the same settings as flags

Runs go repeat by repeat, so a sweep cut short holds whole repeats of the grid. Each run's folder is
named by core/naming.py; its output goes to ``<name>.log`` beside it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import queue
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import tyro

from asyncfl.core import regime as regime_mod
from asyncfl.core import schema
from asyncfl.launch.grid import ME, Run, SweepArgs, grid, one_line, problems
from asyncfl.netem import rootless
from asyncfl.process.runlog import ran_its_course, write_json

REPO = Path(__file__).resolve().parents[3]  # train.sh, beside src/


def summary(run_dir: Path) -> str:
    """One line on a finished run: final F1, rounds, staleness, abandoned rounds, CPU shares."""
    config = json.loads((run_dir / schema.CONFIG).read_text())
    f = config["finished"]
    final = (run_dir / schema.F1_TIME).read_text().strip().splitlines()[-1].split(",")
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


class LocalRuns:
    """The runs started here and not yet reaped; a signal stops them all."""

    def __init__(self, sweep: Path):
        self.sweep = sweep
        self.done: queue.Queue = queue.Queue()
        self.running: dict[str, subprocess.Popen] = {}
        self.failed, self.interrupted = 0, False

    def stop(self, signum=None, frame=None) -> None:
        self.interrupted = True
        for proc in self.running.values():
            proc.terminate()
        self.done.put(None)

    def start(self, run: Run) -> None:
        shutil.rmtree(self.sweep / run.name, ignore_errors=True)  # what an interrupted attempt left
        with open(self.sweep / f"{run.name}.log", "wb") as log:
            proc = subprocess.Popen([str(REPO / "train.sh"), *run.args, "--out-dir", str(self.sweep / run.name)],
                                    stdout=log, stderr=subprocess.STDOUT)
        self.running[run.name] = proc
        threading.Thread(target=lambda n=run.name, p=proc: self.done.put((n, p.wait())), daemon=True).start()

    def reap(self) -> None:
        """Wait for one run to end and print its line."""
        item = self.done.get()
        if item is None:
            return
        name, status = item
        self.running.pop(name)
        if self.interrupted or status in (130, -signal.SIGINT, -signal.SIGTERM):
            return
        if status != 0:
            self.failed += 1
            print(f"  {name} failed (exit {status}); see {self.sweep / name}.log", flush=True)
        else:
            print(summary(self.sweep / name), flush=True)

    def drain(self) -> None:
        while self.running and not self.interrupted:
            self.reap()
        for proc in self.running.values():  # a run started as the signal came in is stopped too
            if self.interrupted:
                proc.terminate()
            proc.wait()


def run_local(a: SweepArgs, sweep: Path, runs: list[Run]) -> int:
    """Run the unfinished runs here, ``jobs`` at a time (see jobs_now); 130 when interrupted, 1 when any failed."""
    local = LocalRuns(sweep)
    signal.signal(signal.SIGINT, local.stop)
    signal.signal(signal.SIGTERM, local.stop)
    for i, run in enumerate(runs):
        if local.interrupted:
            break
        print(f"[{i + 1}/{len(runs)}] {run.name}", flush=True)
        if ran_its_course(sweep / run.name) or (a.done_in and ran_its_course(Path(a.done_in) / "runs" / run.name)):
            print("  done already", flush=True)
            continue
        if a.dry_run:
            continue
        while len(local.running) >= jobs_now(sweep, a.jobs) and not local.interrupted:
            local.reap()
        if local.interrupted:
            break
        local.start(run)
    local.drain()
    if local.interrupted:
        print(f"{ME}: interrupted; run again with SWEEP_DIR={sweep} to resume", flush=True)
        return 130
    if a.dry_run:
        return 0
    print(f"{ME}: done, {local.failed} failed; results in {sweep}")
    warn_starved(sweep, runs)
    return 0 if local.failed == 0 else 1


def warn_starved(sweep: Path, runs: list[Run]) -> None:
    configs = [json.loads((sweep / r.name / schema.CONFIG).read_text()) for r in runs
               if (sweep / r.name / schema.CONFIG).is_file()]
    starved = [c for c in configs if c.get("finished", {}).get("starved")]
    if starved:
        print(f"{ME}: warning: in {len(starved)} of {len(configs)} runs a process waited for a core >= 5% of the time: "
              "runs disturbed each other or the machine was busy (lower JOBS; see finished.cpu in config.json)")


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


def record(a: SweepArgs, sweep: Path) -> None:
    """SWEEP_DIR/sweep.json: the grid file and its text, every variable as the sweep read it, and the
    commit, so the results collected from it (analysis.collect copies it) name what made them."""
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    grid_file = Path(a.grid_file) if a.grid_file else None
    write_json(sweep / schema.SWEEP, {
        "grid_file": str(grid_file.relative_to(REPO)) if grid_file and grid_file.is_relative_to(REPO) else a.grid_file,
        "grid_text": grid_file.read_text() if grid_file else "", "variables": asdict(a), "commit": commit or None,
        "started_at": datetime.now().isoformat(timespec="seconds")})


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
    r = regime_mod.resolve(a.regime, a.time_scale)
    seconds, regime = float(a.duration_s) if a.duration_s else r.duration_s, r.label()
    print(f"{ME}: {len(runs)} runs of {seconds:g} s each, {regime} on {a.dataset} (D in the paper's units), transport "
          f"{a.transport}, split seed {a.split_seed}, {max(a.jobs, 1)} at a time, into {sweep}")
    if a.dataset == "mnist-5k":
        print(f"{ME}: mnist-5k has 400 samples a class: D=600 splits as 40, D=10000 as 667")
    if not a.dry_run:
        sweep.mkdir(parents=True, exist_ok=True)
        record(a, sweep)
    sys.stdout.flush()
    return (submit_slurm if a.launcher == "slurm" else run_local)(a, sweep, runs)


def parse(argv: list[str]) -> SweepArgs | int:
    """train_batch.sh's variables as SweepArgs; one that is not of its type (REPEATS=x) is one line naming
    it, exit status 2 (``--help`` prints as tyro does)."""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            return tyro.cli(SweepArgs, args=argv, prog="./train_batch.sh", description=__doc__)
    except SystemExit as e:
        if e.code == 0:
            print(out.getvalue(), end="")
            return 0
        why = one_line(out.getvalue())
        flag = next((w.strip("'\".,:") for w in why.split() if w.strip("'\".,:").startswith("--")), "")
        var = flag[2:].split("=")[0].replace("-", "_").upper()
        print(f"{ME}: {var + ': ' if var else ''}{why}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    parsed = parse(sys.argv[1:])
    sys.exit(parsed if isinstance(parsed, int) else main(parsed))
