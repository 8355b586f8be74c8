"""Markdown tables, the one way every analysis tool (and bench/) prints one: a header line, the separator,
one line per row. Cells are written with ``str``; a ``|`` inside a cell is escaped so a row keeps its
columns.

    from asyncfl.analysis import markdown
    print(markdown.table(["rule", "rounds"], [["fedavg", 812], ["ssp", 790]]))
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence


def _cell(value) -> str:
    return str(value).replace("|", "\\|")


def line(cells: Iterable) -> str:
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def table(head: Sequence, rows: Iterable[Iterable]) -> str:
    """``head`` as the header, then one line per row (each row as many cells as ``head``)."""
    out = [line(head), "|" + " --- |" * len(head)]
    for row in rows:
        row = list(row)
        if len(row) != len(head):
            raise ValueError(f"a row of {len(row)} cells under a header of {len(head)}: {row}")
        out.append(line(row))
    return "\n".join(out)


def frame_table(frame) -> str:
    """A pandas DataFrame's columns as the header and its rows as lines (no index)."""
    return table(list(frame.columns), frame.itertuples(index=False, name=None))
