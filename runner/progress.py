"""Progress people can see: a rich bar on a terminal, plain periodic lines when detached.

Used by the batch ledger (runner/context.py) for every long step that runs through it
(generation, critic scoring, evaluation items). On a TTY (stdout ``isatty()``), a rich progress
bar with items/s and ETA, redrawn in place. Otherwise (a detached runner writing its log file,
a pipe) one plain line when the bar opens, then at most one every ``RUNNER_PROGRESS_EVERY_S``
seconds (default 30), and one when it closes::

    [progress] scale/gen: 120/400 items (30.0%), 2.41 items/s, ETA 1m56s

``RUNNER_PROGRESS=plain|rich|off`` forces a mode. Imports rich lazily (not on the status path).
"""
from __future__ import annotations

import os
import sys
import time


def _fmt_s(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Progress:
    """``Progress(label, total, done=0)``; ``advance(n)`` after each batch; ``close()`` once (idempotent)."""

    def __init__(self, label: str, total: int, done: int = 0, stream=None):  # noqa: ANN001
        self.label, self.total, self.done = label, int(total), int(done)
        self.stream = stream or sys.stdout
        mode = os.environ.get("RUNNER_PROGRESS", "")
        if mode not in ("plain", "rich", "off"):
            mode = "rich" if getattr(self.stream, "isatty", lambda: False)() else "plain"
        self.mode = mode
        self.every_s = float(os.environ.get("RUNNER_PROGRESS_EVERY_S", "30"))
        self.t0 = self.last = time.monotonic()
        self.start_done = self.done
        self._rich = self._task = None
        self.closed = False
        if self.mode == "rich":
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)
            from rich.console import Console
            self._rich = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[rate]} items/s"), TimeElapsedColumn(),
                                      TextColumn("ETA"), TimeRemainingColumn(),
                                      console=Console(file=self.stream), transient=False)
            self._rich.start()
            self._task = self._rich.add_task(label, total=self.total, completed=self.done, rate="-")
        elif self.mode == "plain":
            self._line()

    def rate(self) -> float:
        dt = time.monotonic() - self.t0
        return (self.done - self.start_done) / dt if dt > 0 else 0.0

    def line(self) -> str:
        r = self.rate()
        pct = f" ({100 * self.done / self.total:.1f}%)" if self.total else ""
        eta = _fmt_s((self.total - self.done) / r) if r > 0 else "?"
        return f"[progress] {self.label}: {self.done}/{self.total} items{pct}, {r:.2f} items/s, ETA {eta}"

    def _line(self) -> None:
        print(self.line(), file=self.stream, flush=True)
        self.last = time.monotonic()

    def advance(self, n: int) -> None:
        self.done += int(n)
        if self._rich is not None:
            self._rich.update(self._task, completed=self.done, rate=f"{self.rate():.2f}")
        elif self.mode == "plain" and time.monotonic() - self.last >= self.every_s:
            self._line()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._rich is not None:
            self._rich.stop()
        elif self.mode == "plain":
            self._line()
