"""Run precopy like each recorded run and set its figures beside QEMU's.

Each run is a real migration as `precopy run` makes one: a `precopy dest
--once` child on a free port of 127.0.0.1, chosen and sized as `run` does,
and the source in this process, over the socket, verified page by page. The
figures compared, measured (QEMU's) against predicted (precopy's report):

- the verdict: `completed`, or `cancelled` (the harness cancels at timeout_s,
  precopy at max-time with on-no-convergence = cancel);
- the time less setup: total-time less setup-time for a completed run; for a
  cancelled one, QEMU's has no total-time, so it is the time from the end of
  setup to the cancel (`migrate_cancel`), against precopy's until its cancel;
- transferred bytes (a cancelled run's are its last poll's, at most one poll
  before the cancel);
- dirty-sync-count (the setup sync and the completion's counted, as QEMU does);
- downtime (completed runs) and the most the throttle took.

A run agrees when its verdict is the same, its time and its bytes are within
the tolerance and its syncs within `SYNC_SLACK`; downtime and throttle are
shown, not judged.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from migrate.config.host import available_memory_bytes, check_host_memory, run_destination_store
from migrate.interrupt import cancel_on_signals
from migrate.launch import DestinationProcess, run_destination_args
from migrate.report import Report
from migrate.source.engine import migrate
from migrate.units import MIB
from migrate.validate.records import RecordError, RunRecord
from migrate.validate.scenario import Configured

SYNC_SLACK = 2  # dirty-sync-count may differ by this many
DEST_EXIT_GRACE_S = 5.0  # a --once destination ends on its own once the migration ends


@dataclass(frozen=True)
class Figure:
    """One figure, measured (QEMU) and predicted (precopy); None where a side has none."""

    measured: float | None
    predicted: float | None

    @property
    def error(self) -> float | None:
        """Relative error of the prediction, (predicted - measured) / measured."""
        if self.measured is None or self.predicted is None:
            return None
        if self.measured == 0:
            return 0.0 if self.predicted == 0 else math.inf
        return (self.predicted - self.measured) / self.measured

    @property
    def difference(self) -> float | None:
        if self.measured is None or self.predicted is None:
            return None
        return self.predicted - self.measured

    def to_dict(self) -> dict[str, Any]:
        return {"measured": self.measured, "predicted": self.predicted,
                "error": self.error if self.error is None or math.isfinite(self.error)
                else None}


@dataclass
class Comparison:
    """One run's figures side by side (see the module docstring)."""

    run: str
    source: str
    verdict: tuple[str, str]  # measured, predicted
    time_ms: Figure  # less setup
    transferred: Figure  # bytes
    syncs: Figure
    downtime_ms: Figure
    max_throttle: Figure
    rate: float  # what precopy's guest was given, writes/s
    wall_s: float
    error: str | None = None  # precopy's, for a run that did not complete or cancel
    scenario: dict[str, Any] = field(default_factory=dict)  # as configured, TOML spelling
    samples: list[tuple[float, float]] = field(default_factory=list)  # predicted (t, remaining)

    def misses(self, tolerance: float) -> list[str]:
        """What is out: `verdict`, `time`, `transferred`, `syncs` (empty: it agrees)."""
        out = []
        if self.verdict[0] != self.verdict[1]:
            out.append("verdict")
        for name, figure in (("time", self.time_ms), ("transferred", self.transferred)):
            if figure.error is None or abs(figure.error) > tolerance:
                out.append(name)
        if self.syncs.difference is None or abs(self.syncs.difference) > SYNC_SLACK:
            out.append("syncs")
        return out

    def to_dict(self, tolerance: float) -> dict[str, Any]:
        return {
            "run": self.run, "source": self.source,
            "verdict": {"measured": self.verdict[0], "predicted": self.verdict[1]},
            "time-less-setup-ms": self.time_ms.to_dict(),
            "transferred-bytes": self.transferred.to_dict(),
            "dirty-sync-count": self.syncs.to_dict(),
            "downtime-ms": self.downtime_ms.to_dict(),
            "max-cpu-throttle-percentage": self.max_throttle.to_dict(),
            "rate": self.rate, "wall-time-s": self.wall_s, "error": self.error,
            "misses": self.misses(tolerance), "ok": not self.misses(tolerance),
            "scenario": self.scenario,
        }


def compare(configured: Configured, report: Report, wall_s: float) -> Comparison:
    """The record's figures beside the report's."""
    r: RunRecord = configured.record
    predicted_time = report.total_time_ms - report.setup_time_ms
    downtime = Figure(r.result.downtime_ms if r.completed else None,
                      report.downtime_ms if report.status == "completed" else None)
    return Comparison(
        run=r.name, source=r.source, verdict=(r.result.status, report.status),
        time_ms=Figure(r.end_ms - r.setup_ms, predicted_time),
        transferred=Figure(float(r.transferred_bytes), float(report.ram.transferred)),
        syncs=Figure(float(r.result.dirty_sync_count), float(report.ram.dirty_sync_count)),
        downtime_ms=downtime,
        max_throttle=Figure(float(r.result.max_cpu_throttle_percentage),
                            float(report.max_cpu_throttle_percentage)),
        rate=configured.rate, wall_s=wall_s,
        error=report.error if report.status not in ("completed", "cancelled") else None,
        samples=[(s.t, float(s.remaining)) for s in report.samples],
        scenario=configured.config,
    )


# ------------------------------------------------------------------------ running


class Interrupted(Exception):
    """Ctrl-C or SIGTERM during a run: the runs stop there."""


def _destination(configured: Configured, log: IO[str]) -> DestinationProcess:
    """A `precopy dest --once` child for the run, chosen and sized as `precopy run` does.

    Raise `RecordError` if the source and the destination would not fit this host.
    """
    s = configured.scenario
    available = available_memory_bytes()
    store = run_destination_store(s.guest, s.mmu, available)
    reason = check_host_memory(s.guest, s.mmu, available, destination=store)
    if reason:
        raise RecordError(f"run {configured.record.name}: {reason}")
    npages = s.guest.memory_pages + s.guest.vga_pages
    return DestinationProcess(*run_destination_args(npages, store), stderr=log,
                              ignore_sigint=True)


async def _migrate(configured: Configured, url: str) -> Report:
    """One migration, cancelled cleanly on SIGINT/SIGTERM (then `Interrupted`).

    As `precopy run`'s (`migrate.interrupt`): the model asks between its steps.
    """
    with cancel_on_signals() as stopped:
        report = await migrate(configured.scenario, url, should_stop=stopped)
    if stopped():
        raise Interrupted("interrupted")
    return report


def run_one(configured: Configured) -> Comparison:
    """Migrate the run's scenario to a fresh destination; its comparison.

    Raise `RecordError` if the host cannot hold it, `Interrupted` on Ctrl-C.
    """
    engine_log = logging.getLogger("precopy.source")
    level = engine_log.level
    engine_log.setLevel(logging.ERROR)  # a cancel by max-time is expected: the table says it
    with tempfile.TemporaryFile("w+") as log:
        started = time.perf_counter()
        dest = _destination(configured, log)
        try:
            report = asyncio.run(_migrate(configured, dest.url))
        finally:
            dest.stop(grace_s=DEST_EXIT_GRACE_S)
            engine_log.setLevel(level)
        comparison = compare(configured, report, time.perf_counter() - started)
        if comparison.error:
            log.seek(0)
            lines = [line.strip() for line in log.read().splitlines() if line.strip()]
            if lines:
                comparison.error += f" (destination: {lines[-1]})"
    return comparison


def run_all(runs: Sequence[Configured], *, say: Callable[[str], None]) -> list[Comparison]:
    """Each run in turn, with a line on `say` as each starts and ends."""
    out = []
    for i, configured in enumerate(runs, 1):
        r = configured.record
        say(f"[{i}/{len(runs)}] {r.name}: QEMU {r.result.status} in "
            f"{(r.end_ms - r.setup_ms) / 1e3:.1f} s less setup, {r.result.dirty_sync_count} "
            "syncs; running precopy like it ...")
        c = run_one(configured)
        say(f"[{i}/{len(runs)}] {r.name}: precopy {c.verdict[1]} in "
            f"{c.time_ms.predicted / 1e3:.1f} s, {c.syncs.predicted:.0f} syncs "
            f"({c.wall_s:.1f} s wall)" + (f": {c.error}" if c.error else ""))
        out.append(c)
    return out


# ------------------------------------------------------------------------ the table


def _pct(error: float | None) -> str:
    if error is None:
        return "-"
    if not math.isfinite(error):
        return "inf"
    return f"{error * 100:+.1f}%"


def _num(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
    return "-" if value is None else f"{value / scale:,.{digits}f}"


def _diff(value: float | None) -> str:
    return "-" if value is None else f"{value:+.0f}"


GROUPS = [("", 2), ("time less setup, s", 3), ("transferred, MiB", 3),
          ("dirty-sync-count", 3), ("downtime, ms", 3), ("max throttle, %", 2), ("", 1)]
HEADER = ["run", "verdict", "QEMU", "precopy", "err", "QEMU", "precopy", "err", "QEMU",
          "precopy", "diff", "QEMU", "precopy", "err", "QEMU", "precopy", "agrees"]


def _row(c: Comparison, tolerance: float) -> list[str]:
    verdict = c.verdict[0] if c.verdict[0] == c.verdict[1] else f"{c.verdict[0]}/{c.verdict[1]}"
    misses = c.misses(tolerance)
    return [c.run, verdict,
            _num(c.time_ms.measured, 1e3, 2), _num(c.time_ms.predicted, 1e3, 2),
            _pct(c.time_ms.error),
            _num(c.transferred.measured, MIB), _num(c.transferred.predicted, MIB),
            _pct(c.transferred.error),
            _num(c.syncs.measured, digits=0), _num(c.syncs.predicted, digits=0),
            _diff(c.syncs.difference),
            _num(c.downtime_ms.measured, digits=0), _num(c.downtime_ms.predicted),
            _pct(c.downtime_ms.error),
            _num(c.max_throttle.measured, digits=0), _num(c.max_throttle.predicted, digits=0),
            "yes" if not misses else "NO: " + ", ".join(misses)]


def _worst(comparisons: Sequence[Comparison], key: Callable[[Comparison], float | None]
           ) -> Comparison | None:
    scored = [(abs(v), c) for c in comparisons if (v := key(c)) is not None]
    return max(scored, key=lambda s: s[0])[1] if scored else None


WORST = {  # figure -> how far a run is off in it, and how that is shown
    "time": (lambda c: c.time_ms.error, _pct),
    "transferred": (lambda c: c.transferred.error, _pct),
    "syncs": (lambda c: c.syncs.difference, _diff),
    "downtime": (lambda c: c.downtime_ms.error, _pct),
    "throttle": (lambda c: c.max_throttle.difference, _diff),
}


def worst(comparisons: Sequence[Comparison]) -> dict[str, Comparison | None]:
    """The run with the largest miss of each figure."""
    return {kind: _worst(comparisons, miss) for kind, (miss, _) in WORST.items()}


def _worst_cell(c: Comparison | None, kind: str) -> str:
    miss, show = WORST[kind]
    return "-" if c is None else show(miss(c))


def _worst_row(comparisons: Sequence[Comparison], tolerance: float) -> list[str]:
    """Per figure, the largest miss of any run (which run: `_worst_line`)."""
    w = worst(comparisons)
    differ = sum(c.verdict[0] != c.verdict[1] for c in comparisons)
    agree = sum(not c.misses(tolerance) for c in comparisons)
    return ["worst", f"{differ} differ" if differ else "all equal",
            "", "", _worst_cell(w["time"], "time"),
            "", "", _worst_cell(w["transferred"], "transferred"),
            "", "", _worst_cell(w["syncs"], "syncs"),
            "", "", _worst_cell(w["downtime"], "downtime"),
            "", _worst_cell(w["throttle"], "throttle"),
            f"{agree} of {len(comparisons)}"]


def _worst_line(comparisons: Sequence[Comparison]) -> str:
    w = worst(comparisons)
    return "worst of each: " + "; ".join(
        f"{kind} {c.run} ({_worst_cell(c, kind)})" for kind, c in w.items() if c is not None)


def format_table(comparisons: Sequence[Comparison], tolerance: float) -> str:
    """The runs side by side, a last row with the worst of each figure, and notes."""
    rows = [_row(c, tolerance) for c in comparisons] + [_worst_row(comparisons, tolerance)]
    widths = [max(len(x) for x in col) for col in zip(HEADER, *rows, strict=True)]
    left = {0, 1, len(HEADER) - 1}

    def fmt(row: list[str]) -> str:
        cells = [x.ljust(w) if i in left else x.rjust(w)
                 for i, (x, w) in enumerate(zip(row, widths, strict=True))]
        return "  ".join(cells).rstrip()

    groups, i = [], 0
    for title, span in GROUPS:
        width = sum(widths[i:i + span]) + 2 * (span - 1)
        groups.append(title.center(width) if title else " " * width)
        i += span
    rule = fmt(["-" * w for w in widths])
    lines = ["  ".join(groups).rstrip(), fmt(HEADER), rule, *map(fmt, rows[:-1]), rule,
             fmt(rows[-1]), "", _worst_line(comparisons)]
    notes = [
        f"err: (precopy - QEMU) / QEMU. A run agrees when its verdict is the same, its "
        f"time and MiB are within {tolerance * 100:g} % and its syncs within "
        f"+-{SYNC_SLACK}; downtime and throttle are shown, not judged.",
        "A cancelled run's time runs from the end of setup to the cancel (QEMU gives no "
        "total-time for it), and QEMU's MiB are its last poll's, at most one poll before "
        "the cancel.",
    ]
    return "\n".join(lines + notes)


def to_json(comparisons: Sequence[Comparison], tolerance: float, *, costs: str
            ) -> dict[str, Any]:
    w = worst(comparisons)
    return {
        "tolerance": tolerance, "sync-slack": SYNC_SLACK, "costs": costs,
        "runs": [c.to_dict(tolerance) for c in comparisons],
        "worst": {kind: (c.run if c else None) for kind, c in w.items()},
        "ok": all(not c.misses(tolerance) for c in comparisons),
    }


def exit_code(comparisons: Sequence[Comparison], tolerance: float) -> int:
    return 0 if all(not c.misses(tolerance) for c in comparisons) else 1


def say_stderr(text: str) -> None:
    print(f"validate: {text}", file=sys.stderr, flush=True)


__all__ = ["Comparison", "Figure", "Interrupted", "compare", "exit_code",
           "format_table", "run_all", "run_one", "say_stderr", "to_json", "worst"]
