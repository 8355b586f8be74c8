"""How much CPU each process of a run got, and how long it waited for one (Linux ``schedstat``); and
its resident memory (``rss_kib``).

A paced run leaves the machine mostly idle, so its timings are the measurement only while no process
waits for a core. The kernel counts, per thread, the time it ran and the time it sat runnable on a run
queue (``/proc/PID/task/TID/schedstat``); ``sample`` reads them for whole processes and ``shares`` turns
two samples into each process's CPU share of the wall clock and the share of it spent waiting for a
core. A process that waited ``STARVED_WAIT_FRAC`` of the wall clock or more was starved: a paced run's
timings then say as much about the machine's load as about the algorithm. (Wait per CPU second says
little here: a paced server sleeps, wakes for a few milliseconds of work and waits a little for a core
at every wake-up, so its wait per CPU second is high even when its rounds keep their pace.)
"""

from __future__ import annotations

from pathlib import Path

STARVED_WAIT_FRAC = 0.05  # runnable but waiting for a core this share of the wall clock: starved


def boot_id() -> str | None:
    """This boot's id: two processes with the same boot id (and pid namespace) see each other's /proc."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """Resident memory of a live process in KiB (``VmHWM``: its peak); OSError if it is gone."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def sample(pid: int) -> dict[int, tuple[int, int]] | None:
    """{thread id: (ns on a CPU, ns waiting on a run queue)} of a live process, None if it is gone."""
    out = {}
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return None
    for task in tasks:
        try:
            run_ns, wait_ns, _ = task.joinpath("schedstat").read_text().split()
        except (OSError, ValueError):
            continue  # the thread ended meanwhile
        out[int(task.name)] = (int(run_ns), int(wait_ns))
    return out


def shares(before: dict[str, dict | None], after: dict[str, dict | None], wall_s: float) -> dict[str, dict]:
    """Per process name: ``cpu_s``, ``cpu_frac`` (of ``wall_s``), ``wait_s`` and ``wait_frac`` (of ``wall_s``)
    between two samples, over the threads alive at the second (one started in between counts from zero)."""
    out = {}
    for name, end in after.items():
        start = before.get(name) or {}
        if end is None:
            continue
        run = sum(r - start.get(tid, (0, 0))[0] for tid, (r, _) in end.items()) / 1e9
        wait = sum(w - start.get(tid, (0, 0))[1] for tid, (_, w) in end.items()) / 1e9
        out[name] = {"cpu_s": round(run, 3), "cpu_frac": round(run / wall_s, 4) if wall_s > 0 else None,
                     "wait_s": round(wait, 3), "wait_frac": round(wait / wall_s, 4) if wall_s > 0 else None}
    return out


def starved(process_shares: dict[str, dict], limit: float = STARVED_WAIT_FRAC,
            ignore: tuple[str, ...] = ("evaluator", "client-sampler")) -> list[str]:
    """Names of the processes that waited for a core at least ``limit`` of the wall clock. The evaluator
    is ignored by default: a snapshot carries the time it was taken, so a slow evaluator shifts no curve;
    so is the client's backoff sampler (a thread, counted apart: it wakes every few milliseconds and waits
    a little at each wake-up, which says nothing about the rounds)."""
    return sorted(name for name, s in process_shares.items()
                  if name not in ignore and (s["wait_frac"] or 0) >= limit)
