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
        low = min(rounds) if rounds else 0
        servers = "  ".join(f"s{i} {r}(+{r - low})" for i, r in enumerate(rounds))
        f1 = f"{self.latest_f1:.4f}" if self.latest_f1 is not None else "-"
        frac = min(1.0, elapsed_s / self.duration_s) if self.duration_s else 1.0
        bar = "█" * int(frac * 20) + "░" * (20 - int(frac * 20))
        self._live.update(Text(f"training {bar} {elapsed_s:5.0f}/{self.duration_s:.0f} s  f1 {f1}  "
                               f"updates {updates}  rounds(staleness) {servers}", overflow="ellipsis", no_wrap=True))

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
