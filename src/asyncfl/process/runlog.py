"""Run outputs: CSV files flushed row by row, and log lines that name their process or thread."""

from __future__ import annotations

import csv
import io
import json
import logging
import subprocess
import sys
import threading
from pathlib import Path

from asyncfl.core import schema


class CsvLog:
    """A CSV file with a fixed header; each row is written whole and flushed, so a killed run still
    leaves only complete rows. Safe to share between threads."""

    def __init__(self, path: str | Path, header: list[str]):
        self.header = header
        self._lock = threading.Lock()
        self._file = open(path, "w", encoding="utf-8", newline="")
        self._file.write(",".join(header) + "\n")
        self._file.flush()

    def write(self, *values) -> None:
        if len(values) != len(self.header):
            raise ValueError(f"expected {len(self.header)} values, got {len(values)}")
        buf = io.StringIO()
        # Floats to 6 significant digits (inline, not a call per value: a row is written every round, under
        # the profiler); csv quotes free text with commas.
        csv.writer(buf, lineterminator="\n").writerow(
            [(f"{v:.6g}" if v == v else "nan") if isinstance(v, float) else v for v in values])
        with self._lock:
            self._file.write(buf.getvalue())
            self._file.flush()

    def write_row(self, **values) -> None:
        """A row by column name: every column of the header, no other (a row of many fields stays readable)."""
        if set(values) != set(self.header):
            missing, extra = set(self.header) - set(values), set(values) - set(self.header)
            raise ValueError(f"row does not match the header: missing {sorted(missing)}, unknown {sorted(extra)}")
        self.write(*(values[c] for c in self.header))

    def close(self) -> None:
        with self._lock:
            self._file.close()


class _WhoFormatter(logging.Formatter):
    """Adds %(who)s: the thread's name, or the process's name for its main thread."""

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "who"):  # a record may name its source itself (the evaluator's scores)
            record.who = record.processName if record.threadName == "MainThread" else record.threadName
        return super().format(record)


class _CurrentStdout:
    """Writes to whatever sys.stdout is at the time, so a live display that redirects it still works."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


def setup_logging(log_path: str | Path | None = None, level: int = logging.INFO, console: bool = True) -> None:
    """Log to stdout (unless ``console`` is False) and, if given, append to ``log_path`` (several processes
    may share one file)."""
    formatter = _WhoFormatter("%(asctime)s %(who)s %(message)s", datefmt="%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(_CurrentStdout())] if console else []
    if log_path:
        handlers.append(logging.FileHandler(log_path, mode="a", encoding="utf-8"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        h.setFormatter(formatter)
        root.addHandler(h)
    root.setLevel(level)


def read_rows(path: str | Path) -> list[dict]:
    """The rows of a CSV written by CsvLog, as dicts of strings."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# A run that ran its course: to its end, or until its global model diverged (non-finite weights), which ends
# training because no server trains a non-finite model. Anything else (error, interrupted) is cut short.
RAN_ITS_COURSE = ("duration", "diverged")


def stop_reason(finished: dict) -> str:
    """Why a run stopped, from config.json's ``finished``. A run whose every error is a server refusing a
    non-finite global model diverged, whatever its record says (code before "diverged" was recorded
    called it "error")."""
    errors = finished.get("errors") or []
    if errors and all(e.endswith("has non-finite values") for e in errors):
        return "diverged"
    return finished.get("stop_reason", "duration")  # runs from before stop_reason was recorded ran to their end


def ran_its_course(run_dir: str | Path) -> bool:
    """True for a run folder whose run trained to its end or until it diverged (see RAN_ITS_COURSE), not
    one still running, killed, interrupted or stopped by an error."""
    try:
        finished = json.loads((Path(run_dir) / schema.CONFIG).read_text()).get("finished")
    except (OSError, ValueError):
        return False
    return isinstance(finished, dict) and stop_reason(finished) in RAN_ITS_COURSE


def write_json(path: Path, obj: dict) -> None:
    """Write ``obj`` as JSON in place of ``path`` atomically: readers never see a half-written file."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


def git_commit() -> str | None:
    """This checkout's commit (short), for config.json's ``versions``; None outside a git checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None
