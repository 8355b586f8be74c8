"""Per-thread wall-clock profile of the client's server threads, written to yappi.csv.

For every server thread: how many rounds it ran, total and mean wall time in the round loop
(``run_round``), in the remote fit (``RemoteServer.fit``) and waiting at the SSP gate
(``TrainingState.wait_turn``), the share of the loop spent waiting, and the largest staleness it saw.
Two ways to the same columns: ``RoundTimers`` (``--profiler timers``, the default), three clock reads a
round in ``run_round`` itself; or yappi (``--profiler yappi``, the paper's profiler), which hooks every
call of every thread and costs about a fifth of the client's CPU in a fast run (docs/performance.md).
"""

from __future__ import annotations

import threading

import yappi

from asyncfl.core import schema
from asyncfl.process.runlog import CsvLog

FUNCTIONS = ("loop", "fit", "gate")  # column prefixes: run_round, RemoteServer.fit, TrainingState.wait_turn


def yappi_functions() -> dict:
    """Column prefix -> the function yappi reports it from (references: a rename breaks the import, not
    the columns). Imported here, not above: the round loop imports this module for its timers."""
    from asyncfl.client.remote import RemoteServer
    from asyncfl.client.rounds import run_round
    from asyncfl.core.state import TrainingState

    return {"loop": run_round, "fit": RemoteServer.fit, "gate": TrainingState.wait_turn}


def is_stat_of(stat, fn) -> bool:
    """Is yappi's ``stat`` the profile of function ``fn`` (the same code: file and first line)?"""
    code = fn.__code__
    return stat.module == code.co_filename and stat.lineno == code.co_firstlineno


class RoundTimers:
    """Wall seconds and calls of ``run_round``, its fit and its gate, per server (each server's thread
    touches only its own entries: no lock)."""

    def __init__(self, n_servers: int):
        self.totals = {key: [0.0] * n_servers for key in FUNCTIONS}
        self.calls = {key: [0] * n_servers for key in FUNCTIONS}

    def add(self, server: int, loop_s: float, fit_s: float | None, gate_s: float | None) -> None:
        for key, value in (("loop", loop_s), ("fit", fit_s), ("gate", gate_s)):
            if value is not None:
                self.totals[key][server] += value
                self.calls[key][server] += 1

    def write_csv(self, path, thread_names: list[str], rounds: list[int], max_staleness: list[int]) -> None:
        out = CsvLog(path, schema.YAPPI_HEADER)
        for server, name in enumerate(thread_names):
            out.write(*_row(server, name, rounds[server], max_staleness[server],
                            {key: (self.calls[key][server], self.totals[key][server]) for key in FUNCTIONS}))
        out.close()


def _row(server: int, name: str, rounds: int, max_staleness: int, totals: dict[str, tuple[int, float]]) -> list:
    row = [server, name, rounds]
    for key in FUNCTIONS:
        calls, total = totals[key]
        row += [round(total, 6), round(total / calls, 6) if calls else 0.0]
    loop_total = totals["loop"][1]
    return row + [round(totals["gate"][1] / loop_total, 4) if loop_total else 0.0, max_staleness]


def start() -> None:
    yappi.set_clock_type("wall")
    yappi.set_context_name_callback(lambda: threading.current_thread().name)
    yappi.start()


def write_yappi_csv(path, thread_names: list[str], rounds: list[int], max_staleness: list[int]) -> None:
    """Stop profiling and write one row per server thread (in server order)."""
    yappi.stop()
    functions = yappi_functions()
    by_name = {t.name: t for t in yappi.get_thread_stats()}
    out = CsvLog(path, schema.YAPPI_HEADER)
    for server, name in enumerate(thread_names):
        totals = {key: (0, 0.0) for key in FUNCTIONS}
        if name in by_name:
            for stat in yappi.get_func_stats(ctx_id=by_name[name].id):
                for key, fn in functions.items():
                    if is_stat_of(stat, fn):
                        calls, total = totals[key]
                        totals[key] = (calls + stat.ncall, total + stat.ttot)
        out.write(*_row(server, name, rounds[server], max_staleness[server], totals))
    out.close()
    yappi.clear_stats()
