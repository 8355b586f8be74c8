"""Helpers for the tests that run the real scripts."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def session_pids(sid: int) -> list[int]:
    """Live processes of a session (the ones a script started, however deep)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                pids.append(int(d.name))
    return pids


def wait_session_gone(sid: int, timeout_s: float = 10.0) -> list[int]:
    """Processes of session ``sid`` still alive after up to ``timeout_s``: multiprocessing's resource
    tracker exits on its own a moment after its parent, so an empty session is awaited, not sampled."""
    deadline = time.monotonic() + timeout_s
    while (pids := session_pids(sid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pids


def run_script(args: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    """Run a script to completion in a session of its own; on timeout, kill everything it started."""
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_session(proc)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def wait_for_rows(path: Path, n_rows: int, proc: subprocess.Popen, timeout_s: float) -> None:
    """Wait until the CSV at ``path`` has ``n_rows`` data rows (the run's own progress signal)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().count("\n") > n_rows:
            return
        if proc.poll() is not None:
            raise AssertionError(f"the script exited with {proc.returncode} before writing {n_rows} rows")
        time.sleep(0.1)
    raise AssertionError(f"{path} did not reach {n_rows} rows in {timeout_s} s")


def kill_session(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """Stop everything a test started in session ``proc.pid``: SIGTERM to its leader first, so that it
    cleans up (named semaphores, namespaces) as a user's Ctrl-C would; SIGKILL to whatever is left."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    wait_session_gone(proc.pid, timeout_s=grace_s if proc.poll() is not None else 0.0)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def start_servers(tmp_path: Path, *flags: str, env: dict | None = None, timeout_s: float = 60.0):
    """Start server/main.py (output to tmp_path/servers.log) and wait for its ready file; returns the process
    and the server addresses. Stop it with kill_session."""
    ready = tmp_path / "servers.ready"
    log_file = open(tmp_path / "servers.log", "w")
    proc = subprocess.Popen([PYTHON, "-m", "asyncfl.server", "--base-port", "0", "--ready-file", str(ready), *flags],
                            cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, **(env or {})})
    log_file.close()
    deadline = time.monotonic() + timeout_s
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            kill_session(proc)
            raise AssertionError("server/main.py did not get ready:\n" + (tmp_path / "servers.log").read_text())
        time.sleep(0.05)
    return proc, ready.read_text().strip().split(",")


