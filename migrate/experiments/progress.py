"""The sweep's progress: one bar with an ETA, redrawn in place on a terminal.

On a terminal the line is redrawn as points start and finish and once a
second; otherwise (a pipe, a CI log) each finished point prints one plain
line. The ETA is the wall time per finished point of this run, times the
points left, so it already accounts for the jobs running side by side.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO

from migrate.experiments.results import PointResult
from migrate.summary import FORCED

BAR_WIDTH = 24


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02}:{s:02}" if h else f"{m}:{s:02}"


def outcome(result: PointResult) -> str:
    """A few words on how a point ended."""
    if result.report is None:
        return f"ERROR ({result.error})"
    report = result.report
    if result.ok:
        forced = f" ({FORCED})" if report.forced else ""
        return (f"completed{forced}, verified, downtime {report.downtime_ms:,.1f} ms, "
                f"total {report.total_time_ms / 1e3:,.2f} s")
    why = f" ({report.error})" if report.error else ""
    return f"{result.status.upper()}{', not verified' if not result.verified else ''}{why}"


class Progress:
    """Counts of a sweep's points, drawn as a bar (tty) or as lines (anything else)."""

    def __init__(self, total: int, already_done: int, *, stream: TextIO | None = None,
                 tty: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.total = total
        self.done = already_done
        self.to_run = total - already_done
        self.finished = 0  # in this run
        self.failed = 0
        self.running: list[str] = []
        self.started_at = time.monotonic()
        self.last = ""

    # ------------------------------------------------------------------ events

    def start(self, name: str) -> None:
        self.running.append(name)
        self.draw()

    def finish(self, result: PointResult) -> None:
        if result.name in self.running:
            self.running.remove(result.name)
        self.done += 1
        self.finished += 1
        self.failed += not result.ok
        self.last = f"{result.name}: {outcome(result)}"
        if self.tty:
            if not result.ok:  # kept above the bar, not overwritten by the next point
                self.stream.write(f"\r\x1b[K{self.last}\n")
            self.draw()
        else:
            print(f"[{self.done:>{len(str(self.total))}}/{self.total}] {self.last} "
                  f"({result.wall_time_s:.1f} s wall; ETA {self.eta()})",
                  file=self.stream, flush=True)

    def abandon(self, name: str) -> None:
        """A point stopped without a result (the sweep was interrupted)."""
        if name in self.running:
            self.running.remove(name)

    # ------------------------------------------------------------------ drawing

    def eta(self) -> str:
        left = self.total - self.done
        if left == 0:
            return "0:00"
        if self.finished == 0:
            return "--:--"
        per_point = (time.monotonic() - self.started_at) / self.finished
        return format_duration(per_point * left)

    def line(self) -> str:
        share = self.done / self.total if self.total else 1.0
        filled = int(share * BAR_WIDTH)
        bar = "=" * filled + (">" if filled < BAR_WIDTH else "") + " " * (BAR_WIDTH - filled - 1)
        elapsed = format_duration(time.monotonic() - self.started_at)
        failed = f", {self.failed} not ok" if self.failed else ""
        text = (f"[{bar[:BAR_WIDTH]}] {self.done}/{self.total} points, "
                f"{len(self.running)} running{failed}, {elapsed} elapsed, ETA {self.eta()}")
        if self.last:
            text += f" | {self.last}"
        return text

    def draw(self) -> None:
        if not self.tty:
            return
        width = shutil.get_terminal_size((100, 20)).columns - 1
        self.stream.write("\r\x1b[K" + self.line()[:width])
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.draw()
            self.stream.write("\n")
            self.stream.flush()
