"""A live status line for a terminal: elapsed time, each server's round and staleness, the latest F1.

Drawn with rich below the scrolling log; log lines keep appearing above it. Off when stdout is not a
terminal (a pipe, a file, CI), where the plain log lines are all there is.
"""

from __future__ import annotations

import sys

from rich.console import Console
from rich.live import Live
from rich.text import Text


class LiveStatus:
    def __init__(self, enabled: bool, duration_s: float):
        self.duration_s = duration_s
        self.latest_f1: float | None = None
        self._live = None
        if enabled:
            # redirect_stdout: log lines written to sys.stdout scroll above the status line.
            self._live = Live(Text(""), console=Console(file=sys.__stdout__), refresh_per_second=4,
                              transient=True, redirect_stdout=True, redirect_stderr=False)
            self._live.start()

    def update(self, elapsed_s: float, rounds: list[int], updates: int) -> None:
        if self._live is None:
            return
        text = status_text(self._live.console.width, elapsed_s, self.duration_s, self.latest_f1, rounds, updates)
        self._live.update(Text(text, overflow="ellipsis", no_wrap=True))

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


def status_text(width: int, elapsed_s: float, duration_s: float, f1: float | None, rounds: list[int], updates: int) -> str:
    """The status line in at most ``width`` characters: each server's round and staleness when they fit,
    else the smallest and largest round (many servers, a narrow terminal), then cut."""
    low = min(rounds) if rounds else 0
    frac = min(1.0, elapsed_s / duration_s) if duration_s else 1.0
    bar = "█" * int(frac * 20) + "░" * (20 - int(frac * 20))
    head = f"training {bar} {elapsed_s:5.0f}/{duration_s:.0f} s  f1 {'-' if f1 is None else f'{f1:.4f}'}  updates {updates}"
    each = "  rounds(staleness) " + "  ".join(f"s{i} {r}(+{r - low})" for i, r in enumerate(rounds))
    if len(head + each) > width and rounds:
        each = f"  rounds {low}..{max(rounds)} over {len(rounds)} servers"
    line = head + each
    return line if len(line) <= width else line[:max(width - 1, 0)] + "…"

