"""The terminal's live line: a pass in flight, redrawn in place until its pass line replaces it.

`format_pass_progress` is pure (a `PassProgress` and a width in, one line
out); `LiveLine` draws it with a carriage return and an erase, as the sweep's
bar does (`migrate.experiments.progress`), and clears it before anything else
reaches the terminal: the pass line, the summary, a log line on stderr, the
exit. Only for a terminal: anywhere else the per-pass lines are the output.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import TextIO

from migrate.experiments.progress import format_duration
from migrate.source.progress import PassProgress
from migrate.units import MIB
from vmmodel import PAGE_SIZE

CLEAR = "\r\x1b[K"  # back to the line's start, erase to its end
DEFAULT_COLUMNS = 80  # a terminal that does not say its width


def is_terminal(stream: TextIO) -> bool:
    """A terminal that can take the line: a tty, and not one that says it cannot erase."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False
    return tty and os.environ.get("TERM") != "dumb"


def format_count(n: int) -> str:
    """A count read at a glance: exact below 10,000, then 3 significant digits (16.8M)."""
    if n < 10_000:
        return f"{n:,}"
    for scale, suffix in ((1e3, "k"), (1e6, "M"), (1e9, "G")):
        value = n / scale
        text = f"{value:.{0 if value >= 99.95 else 1 if value >= 9.995 else 2}f}"
        if float(text) < 1000 or suffix == "G":  # 999,999 is 1.00M, not 1000k
            return text + suffix
    raise AssertionError("unreachable")  # the last suffix always returns


def format_rate(mib_per_s: float) -> str:
    """MiB/s, 3 or 4 significant digits, no thousands comma (as the pass line); GiB/s from
    10,000 MiB/s (zero pages go that fast)."""
    if mib_per_s <= 0:
        return "-- MiB/s"
    if mib_per_s >= 9_999.5:
        return f"{mib_per_s / 1024:.1f} GiB/s"
    return f"{mib_per_s:.0f} MiB/s" if mib_per_s >= 99.95 else f"{mib_per_s:.1f} MiB/s"


def format_seconds(seconds: float | None) -> str:
    """Tenths of a second under a minute (emulated passes are short), else the sweep's
    m:ss or h:mm:ss; `--` for an ETA not known yet."""
    if seconds is None:
        return "--"
    return f"{seconds:.1f}s" if seconds < 59.95 else format_duration(seconds)


def format_pass_progress(p: PassProgress, width: int = DEFAULT_COLUMNS - 1) -> str:
    """One line of at most `width` characters: the pass and its pages sent of how many, then
    what fits of (kept longest first) the ETA in emulated time and in wall time, the
    rate, the dirty pages pending and the emulator's speed (emulated over wall time)."""
    done = p.pages_sent * 100 // p.pages_total if p.pages_total else 100
    head = (f"{p.phase} {p.pass_no}: {format_count(p.pages_sent)}/"
            f"{format_count(p.pages_total)} pages {done}%")
    parts = [  # (rank: the lower, the longer it stays; separator; text), in reading order
        (3, ", ", format_rate(p.pages_per_s * PAGE_SIZE / MIB)),
        (5, ", ", f"{p.speedup:.1f}x real time"),
        (4, ", ", f"{format_count(p.dirty_pages)} dirty"),
        (1, ", ", f"ETA {format_seconds(p.eta_virtual_s)}"),
        (2, " ", f"({format_seconds(p.eta_wall_s)} wall)"),
    ]
    if not p.speedup:  # an extra: not worth a placeholder
        del parts[1]
    while parts:
        line = head + "".join(sep + text for _, sep, text in parts)
        if len(line) <= width:
            return line
        parts.remove(max(parts))  # the least wanted goes first
    return head[:width]


class LiveLine:
    """The live line on `stream` (a terminal): drawn, replaced, cleared, never left behind.

    Use it as a context manager: while it is open, anything logged is preceded by a
    clear (a log line would otherwise be glued to the live line), and on leaving, for
    whatever reason, the line is cleared.
    """

    def __init__(self, stream: TextIO, *, columns: int | None = None) -> None:
        self.stream = stream
        self.columns = columns  # None: ask the terminal at each draw (it may be resized)
        self.drawn = False
        self.broken = False  # the stream failed once: draw no more

    def show(self, progress: PassProgress) -> None:
        columns = self.columns or shutil.get_terminal_size((DEFAULT_COLUMNS, 24)).columns
        # One column short: a line that fills the last column wraps on some terminals.
        self._write(CLEAR + format_pass_progress(progress, max(columns - 1, 1)))
        self.drawn = not self.broken

    def clear(self) -> None:
        """Erase the line if one is drawn (the cursor is left at the line's start)."""
        if self.drawn:
            self.drawn = False
            self._write(CLEAR)

    def _write(self, text: str) -> None:
        if self.broken:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # the terminal went away: the migration goes on
            self.broken = True

    def _before_log(self, record: logging.LogRecord) -> bool:
        self.clear()
        return True  # a filter that lets every record through

    def __enter__(self) -> LiveLine:
        for handler in logging.getLogger().handlers:
            handler.addFilter(self._before_log)
        return self

    def __exit__(self, *exc: object) -> None:
        self.clear()
        for handler in logging.getLogger().handlers:
            handler.removeFilter(self._before_log)
