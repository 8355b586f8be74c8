"""Per-thread wall-clock profile of the client's server threads (yappi), written to yappi.csv.

For every server thread: how many rounds it ran, total and mean wall time in the round loop
(``run_round``), in the remote fit (``RemoteServer.fit``) and waiting at the SSP gate
(``TrainingState.wait_turn``), the share of the loop spent waiting, and the largest staleness it saw.
"""

from __future__ import annotations

import threading

import yappi

from asyncfl.client.remote import RemoteServer
from asyncfl.client.rounds import run_round
from asyncfl.core import schema
from asyncfl.core.state import TrainingState
from asyncfl.process.runlog import CsvLog

# Column prefix -> the function whose wall time it reports (references: a rename breaks the import, not
# the columns).
FUNCTIONS = {"loop": run_round, "fit": RemoteServer.fit, "gate": TrainingState.wait_turn}


def is_stat_of(stat, fn) -> bool:
    """Is yappi's ``stat`` the profile of function ``fn`` (the same code: file and first line)?"""
    code = fn.__code__
    return stat.module == code.co_filename and stat.lineno == code.co_firstlineno


def start() -> None:
    yappi.set_clock_type("wall")
    yappi.set_context_name_callback(lambda: threading.current_thread().name)
    yappi.start()


def write_csv(path, thread_names: list[str], rounds: list[int], max_staleness: list[int]) -> None:
    """Stop profiling and write one row per server thread (in server order)."""
    yappi.stop()
    by_name = {t.name: t for t in yappi.get_thread_stats()}
    out = CsvLog(path, schema.YAPPI_HEADER)
    for server, name in enumerate(thread_names):
        totals = {key: (0, 0.0) for key in FUNCTIONS}
        if name in by_name:
            for stat in yappi.get_func_stats(ctx_id=by_name[name].id):
                for key, fn in FUNCTIONS.items():
                    if is_stat_of(stat, fn):
                        calls, total = totals[key]
                        totals[key] = (calls + stat.ncall, total + stat.ttot)
        row = [server, name, rounds[server]]
        for key in FUNCTIONS:
            calls, total = totals[key]
            row += [round(total, 6), round(total / calls, 6) if calls else 0.0]
        loop_total = totals["loop"][1]
        row += [round(totals["gate"][1] / loop_total, 4) if loop_total else 0.0, max_staleness[server]]
        out.write(*row)
    out.close()
    yappi.clear_stats()
