"""Progress within a pass: samples of a pass in flight, taken between batches.

A pass of a large guest takes minutes; the per-pass `RoundRecord` only comes at
its end. The engine feeds a `PassMeter` before each batch, and the meter hands
a `PassProgress` to a callback at most once per `every_s` of wall time, so the
sampling costs one clock read per batch (the dirty count, a scan of every
bitmap, is taken only for a sample). What to draw of it is the caller's
business (`migrate.live` draws the terminal's line): nothing here writes.

Sampling reads the model and changes nothing in it, so a run with a meter gives
the same report as a run without one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from vmmodel import NS_PER_S

EVERY_S = 0.2  # at most ~5 samples a wall second: a line that moves, at no cost worth naming


@dataclass(frozen=True)
class PassProgress:
    """One sample of a pass in flight."""

    pass_no: int
    phase: str  # "precopy" or "stop-and-copy", as the pass's RoundRecord says
    pages_sent: int  # pages handed to the channels so far in this pass
    pages_total: int  # the pass's pages
    virtual_ns: float  # the migration's clock since the pass began (the emulated time)
    wall_s: float  # wall time since the pass began (the emulator's own time)
    dirty_pages: int  # QEMU's migration_dirty_pages now: what query-migrate's remaining counts

    @property
    def pages_per_s(self) -> float:
        """Pages sent per second of the emulated migration (0 before any time passed)."""
        return self.pages_sent * NS_PER_S / self.virtual_ns if self.virtual_ns > 0 else 0.0

    @property
    def speedup(self) -> float:
        """Emulated seconds per wall second in this pass (0 before any wall time passed)."""
        return self.virtual_ns / NS_PER_S / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def eta_virtual_s(self) -> float | None:
        """Emulated seconds until the pass's last page is handed out, at the rate so far;
        None while there is no rate to go by."""
        return _eta(self.pages_total - self.pages_sent, self.pages_sent, self.virtual_ns / NS_PER_S)

    @property
    def eta_wall_s(self) -> float | None:
        """Wall seconds until then, at the wall rate so far; None while there is none."""
        return _eta(self.pages_total - self.pages_sent, self.pages_sent, self.wall_s)


def _eta(left: int, done: int, elapsed_s: float) -> float | None:
    if left <= 0:
        return 0.0
    if done <= 0 or elapsed_s <= 0:
        return None
    return left * elapsed_s / done


class PassMeter:
    """Counts a pass's batches as they are handed out; samples them for a callback.

    The first batch of a migration is always sampled (the line appears at once),
    then at most one batch every `every_s` seconds of `timer`, across passes.
    """

    def __init__(self, report: Callable[[PassProgress], None], *, dirty: Callable[[], int],
                 every_s: float = EVERY_S, timer: Callable[[], float] = time.monotonic) -> None:
        self.report = report
        self.dirty = dirty
        self.every_s = every_s
        self.timer = timer
        self._next_s = float("-inf")
        self.start(0, "precopy", 0, 1, 0.0)

    def start(self, pass_no: int, phase: str, pages_total: int, batch_pages: int,
              now_ns: float) -> None:
        """A pass of `pages_total` pages, sent `batch_pages` at a time, begins at `now_ns`."""
        self.pass_no, self.phase = pass_no, phase
        self.pages_total, self.batch_pages = pages_total, batch_pages
        self._sent = 0
        self._start_ns = now_ns
        self._start_s = self.timer()

    def batch(self, now_ns: float, pages: int | None = None) -> None:
        """The next batch (`pages` pages; default `batch_pages`) is about to be read at
        `now_ns`: sample, if one is due."""
        sent = min(self._sent, self.pages_total)
        self._sent += self.batch_pages if pages is None else pages
        wall = self.timer()
        if wall < self._next_s:
            return
        self._next_s = wall + self.every_s
        self.report(PassProgress(
            pass_no=self.pass_no, phase=self.phase, pages_sent=sent,
            pages_total=self.pages_total, virtual_ns=now_ns - self._start_ns,
            wall_s=wall - self._start_s, dirty_pages=self.dirty(),
        ))
