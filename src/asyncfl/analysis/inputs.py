"""Reading what runs wrote, for every analysis tool: a file that cannot be read is one line, never a traceback.

    from asyncfl.analysis import inputs
    f1 = inputs.read_csv(run_dir / schema.F1_TIME)      # a DataFrame; f1.attrs["cut_rows"]: the cut last row dropped
    sys.exit(inputs.guarded(main, args, "python -m asyncfl.analysis.analyze"))

A run writes its CSVs row by row, each row ending in a newline, so a file whose last line has no newline was
cut mid-row (the run killed, the disk full, a copy stopped): that line is dropped and counted, never read as
a value. Anything else wrong (no header, a header missing the columns a reader needs, a row of the wrong
width, a value that is not a number where a number belongs) is an ``InputError`` naming the file and the row.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import pandas as pd

from asyncfl.core import schema
from asyncfl.process.runlog import RAN_ITS_COURSE, stop_reason

# The columns each run file must have, and those of them that hold numbers (empty cells allowed: NaN).
NUMERIC = {
    schema.F1_TIME: ("time_s", "f1"),
    schema.F1_EPOCH: ("epoch", "f1"),
    schema.EVENTS: ("time_s",),
    schema.ROUNDS: ("time_s", "server"),
    schema.YAPPI: ("gate_frac",),
    schema.RUNS: (),
}


class InputError(Exception):
    """A file or folder a user pointed a tool at that cannot be read as what it should be."""


def _number(text: str) -> bool:
    if text == "":
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_csv(path: Path, numeric: tuple[str, ...] | None = None) -> pd.DataFrame:
    """The table in ``path`` with a cut last row dropped (``attrs["cut_rows"]``: 0 or 1); ``numeric``: the
    columns that must be present and hold numbers (default: ``NUMERIC`` by the file's name)."""
    path = Path(path)
    numeric = NUMERIC.get(path.name, ()) if numeric is None else numeric
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot be read ({getattr(e, 'strerror', None) or e})") from None
    lines = text.split("\n")
    cut = 0
    if lines[-1] != "":  # the last line never got its newline
        lines, cut = lines[:-1], 1
    lines = lines[:-1] if lines and lines[-1] == "" else lines
    if not lines:
        raise InputError(f"{path}: empty (not even a header)" + ("; its only line is cut" if cut else ""))
    rows = list(csv.reader(io.StringIO("\n".join(lines) + "\n")))
    header = rows[0]
    if missing := [c for c in numeric if c not in header]:
        raise InputError(f"{path}: the header ({','.join(header)}) lacks {', '.join(missing)}: not a run's file, or cut")
    columns = [header.index(c) for c in numeric]
    for number, row in enumerate(rows[1:], start=2):  # row numbers as an editor shows the file's lines
        if len(row) != len(header):
            raise InputError(f"{path}, line {number}: {len(row)} values for {len(header)} columns")
        for c in columns:
            if not _number(row[c]):
                raise InputError(f"{path}, line {number}: {header[c]} is {row[c]!r}, not a number")
    frame = pd.read_csv(io.StringIO("\n".join(lines) + "\n"))
    frame.attrs["cut_rows"] = cut
    return frame


def read_optional(path: Path) -> pd.DataFrame | None:
    """``read_csv`` of a file a run may not have written (older runs, other backends): None when absent."""
    return read_csv(path) if Path(path).exists() else None


def read_config(run_dir: Path) -> dict:
    """A run's config.json as a dict; an InputError when it is missing or not JSON."""
    path = Path(run_dir) / schema.CONFIG
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no such file (not a run folder)") from None
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not JSON ({e})") from None
    if not isinstance(config, dict):
        raise InputError(f"{path}: not a run's config.json (not an object)")
    return config


def folders(paths, what: str = "folder") -> list[Path]:
    """``paths`` checked to exist as folders, or an InputError naming the first that does not."""
    out = []
    for p in map(Path, paths):
        if not p.exists():
            raise InputError(f"{p}: no such {what}")
        if not p.is_dir():
            raise InputError(f"{p}: not a {what}")
        out.append(p)
    return out


def interrupted(config: dict) -> bool:
    """A run stopped by its user (Ctrl-C, SIGTERM), whose files are whole up to where it stopped."""
    return isinstance(config.get("finished"), dict) and stop_reason(config["finished"]) == "interrupted"


def find_runs(paths: list[Path], with_interrupted: bool = True) -> list[Path]:
    """Run folders among ``paths`` that ran their course (and, with ``with_interrupted``, those their user
    stopped): each one itself, or the run folders directly inside a sweep folder. The rest are left out,
    and said so; a path that is not a folder is an InputError."""
    candidates = []
    for p in folders(paths):
        if (p / schema.CONFIG).exists():
            candidates.append(p)
        else:
            candidates.extend(sorted(d for d in p.iterdir() if (d / schema.CONFIG).exists()))
    kept = RAN_ITS_COURSE + (("interrupted",) if with_interrupted else ())
    runs, left = [], []
    for d in candidates:
        finished = read_config(d).get("finished")
        why = stop_reason(finished) if isinstance(finished, dict) else "not finished (still running, or killed)"
        (runs if why in kept else left).append((d, why))
    for d, why in left:
        print(f"left out {d}: {'stopped by ' + why if why in ('error', 'interrupted') else why}", file=sys.stderr)
    return [d for d, _ in runs]


def guarded(main, args, prog: str) -> int:
    """``main(args)``, with an InputError printed as one line ``prog: ...`` and exit status 2."""
    try:
        return main(args)
    except InputError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
