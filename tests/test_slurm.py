"""LAUNCHER=slurm against a real one-node Slurm cluster started by the test: munged, slurmctld and slurmd
with a generated configuration in a temporary folder, stopped by pid afterwards. A 2 S x 2 repeats grid
of 8 s runs goes through sbatch --array; a resubmission runs only what is missing; analyze reads it."""

import csv
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import PYTHON, ROOT

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo")
DEADLINE_S = 300.0


def slurm_installed() -> str | None:
    """None when Slurm and munge are here (installing them from Debian as root if need be), else why not."""
    if all(shutil.which(d) for d in DAEMONS):
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "Slurm is not installed and cannot be (needs root and apt-get)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    packages = ["slurmctld", "slurmd", "slurm-client", "munge"]
    for attempt in ([], [["apt-get", "update", "-qq"]]):
        for cmd in attempt:
            subprocess.run(cmd, env=env, capture_output=True, timeout=600)
        if subprocess.run(["apt-get", "install", "-y", "-qq", *packages], env=env, capture_output=True,
                          timeout=600).returncode == 0 and all(shutil.which(d) for d in DAEMONS):
            return None
    return "apt-get could not install slurmctld, slurmd, slurm-client and munge"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster(tmp_path):
    """A one-node cluster (this machine, 2 CPUs) whose SLURM_CONF is returned in an environment."""
    why = slurm_installed()
    if why:
        pytest.skip(why)
    if os.geteuid() != 0:
        pytest.skip("slurmd runs jobs as their users: the test cluster needs root")
    d = tmp_path / "slurm"
    (d / "spool").mkdir(parents=True)
    (d / "state").mkdir()
    d.chmod(0o700)
    host = socket.gethostname()
    (d / "munge.key").write_bytes(os.urandom(1024))
    (d / "munge.key").chmod(0o600)
    conf = d / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=asyncfltest", f"SlurmctldHost={host}(127.0.0.1)", f"SlurmctldPort={free_port()}",
        f"SlurmdPort={free_port()}", "AuthType=auth/munge", f"AuthInfo=socket={d}/munge.socket",
        "CryptoType=crypto/munge", "MpiDefault=none", "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core", "ReturnToService=2", "SlurmUser=root",
        f"SlurmctldPidFile={d}/slurmctld.pid", f"SlurmdPidFile={d}/slurmd.pid", f"SlurmdSpoolDir={d}/spool",
        f"StateSaveLocation={d}/state", f"SlurmctldLogFile={d}/slurmctld.log", f"SlurmdLogFile={d}/slurmd.log",
        "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN",
        f"PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP", ""]))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    procs = []
    try:
        subprocess.run(["munged", f"--key-file={d}/munge.key", f"--socket={d}/munge.socket",
                        f"--pid-file={d}/munged.pid", f"--log-file={d}/munged.log", f"--seed-file={d}/munge.seed",
                        "--force"], check=True, timeout=30)
        procs.append(("slurmctld", subprocess.Popen(["slurmctld", "-D"], env=env, stdout=subprocess.DEVNULL,
                                                    stderr=subprocess.DEVNULL)))
        procs.append(("slurmd", subprocess.Popen(["slurmd", "-D", "-N", host], env=env, stdout=subprocess.DEVNULL,
                                                 stderr=subprocess.DEVNULL)))
        deadline = time.monotonic() + 60
        while "idle" not in subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True,
                                            text=True).stdout:
            assert time.monotonic() < deadline, "the node never became idle:\n" + (d / "slurmctld.log").read_text()[-2000:]
            assert all(p.poll() is None for _, p in procs), "a Slurm daemon exited"
            time.sleep(0.2)
        yield env
    finally:
        for _, p in reversed(procs):
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        munged_pid = d / "munged.pid"
        if munged_pid.exists():
            try:
                os.kill(int(munged_pid.read_text()), 15)
            except (ProcessLookupError, ValueError):
                pass


def sweep(env: dict, sweep_dir: Path) -> subprocess.CompletedProcess:
    grid = {"LAUNCHER": "slurm", "SWEEP_DIR": str(sweep_dir), "REGIME": "fast", "LOSSES": "0%", "STDEVS": "0",
            "STALENESS": "0 9999", "REPEATS": "2", "DURATION_S": "8", "EVAL_INTERVAL_S": "2", "TRANSPORT": "loopback",
            "CPUS_PER_TASK": "1"}
    return subprocess.run([str(ROOT / "train_batch.sh")], cwd=ROOT, env={**env, **grid}, capture_output=True,
                          text=True, timeout=120)


def wait_for_queue(env: dict) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True).stdout.strip():
        assert time.monotonic() < deadline, "the array did not finish"
        time.sleep(1.0)


def finished(run: Path) -> bool:
    return '"stop_reason": "duration"' in (run / "config.json").read_text() if (run / "config.json").exists() else False


def test_a_grid_runs_as_a_slurm_array_resubmission_fills_gaps_and_analyze_reads_it(cluster, tmp_path):
    sweep_dir = tmp_path / "sweep"
    # Execute: submit the 2 x 2 grid and wait for the array
    first = sweep(cluster, sweep_dir)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "submitted 4 runs as Slurm array job" in first.stdout
    wait_for_queue(cluster)
    runs = sorted(p for p in sweep_dir.iterdir() if p.is_dir())
    logs = "".join(p.read_text() for p in sweep_dir.glob("slurm-*.out"))
    assert [p.name for p in runs] == sorted(f"L0-D0-S{s}-speeds_1_1_1_1-r{r}" for s in (0, 9999) for r in (0, 1)), logs
    assert all(finished(p) for p in runs), logs
    # Execute: one run lost; resubmitting the same command runs that one alone
    shutil.rmtree(runs[0])
    again = sweep(cluster, sweep_dir)
    assert "submitted 1 runs" in again.stdout, again.stdout + again.stderr
    assert (sweep_dir / "runs.txt").read_text().count("\n") == 1
    wait_for_queue(cluster)
    assert finished(runs[0])
    assert "every run has finished already" in sweep(cluster, sweep_dir).stdout
    # Execute: the analysis reads the sweep folder as it reads a local one
    out = tmp_path / "analysis"
    analyzed = subprocess.run([PYTHON, "-m", "asyncfl.analysis.analyze", str(sweep_dir), "--out", str(out)], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
    assert analyzed.returncode == 0, analyzed.stderr
    rows = list(csv.DictReader(open(out / "runs.csv")))
    assert len(rows) == 4 and {r["staleness"] for r in rows} == {"0", "9999"}
