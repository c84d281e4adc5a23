"""A sweep's output folder: `sweep.json` (what was asked), `results.jsonl` (what happened).

`results.jsonl` is append-only, one JSON line per finished point, written in
one `write` and flushed to disk, so an interrupted sweep leaves whole lines
(a torn last line is skipped on reading and never glued to the next one).
A point is done once its line holds a report; a line without one (the run
crashed or timed out: an emulator problem, not a migration result) is tried
again by the next `precopy sweep`. The last line for a name wins.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from migrate.experiments import ExperimentError
from migrate.experiments.sweep import Point, Sweep
from migrate.record import Record, keyed
from migrate.report import Report

RESULTS = "results.jsonl"
SWEEP = "sweep.json"
LOCK = ".lock"
ERROR = "error"  # status of a point whose run produced no report


CODE_DIRS = ("vmmodel", "migrate", "configs")  # what decides a result besides its scenario


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def code_version() -> str:
    """The code that produces results: the git commit, plus a digest of uncommitted changes
    to the model, the migration code and the configs ("a0ea44b+3f2c1d09"); without git,
    the package version."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10, check=True)
        diff = subprocess.run(["git", "-C", str(root), "diff", "HEAD", "--", *CODE_DIRS],
                              capture_output=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("precopy")
        except PackageNotFoundError:
            return "unknown"
    changes = f"+{hashlib.sha1(diff.stdout).hexdigest()[:8]}" if diff.stdout else ""
    return head.stdout.strip() + changes


@dataclass
class PointResult(Record):
    """One point's line in results.jsonl: its name and values, and its full report."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    status: str = ERROR  # the report's status, or "error" when there is no report
    verified: bool = False
    command: str = ""  # `precopy run ...` that reruns the point alone
    started: str = ""
    finished: str = ""
    wall_time_s: float = keyed("wall-time-s", default=0.0)
    exit_code: int | None = None
    error: str | None = None
    code: str = ""  # code_version() of the sweep that ran it
    report: Report | None = None  # the run's report; an old line's missing fields: defaults

    @property
    def done(self) -> bool:
        return self.report is not None

    @property
    def ok(self) -> bool:
        return self.status == "completed" and self.verified


class ResultsFolder:
    """The output folder of one sweep."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.results_path = self.path / RESULTS
        self.sweep_path = self.path / SWEEP
        self.skipped_lines = 0
        self._lock_fd: int | None = None

    # ------------------------------------------------------------------ writing

    def open_for_sweep(self) -> None:
        """Create the folder and take its lock.

        Raise `ExperimentError` if it cannot be created or another sweep holds it.
        """
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise ExperimentError(f"--out {self.path}: {err.strerror or err}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ExperimentError(f"--out {self.path}: another sweep is writing there") from None
        self._lock_fd = fd

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def write_sweep(self, sweep: Sweep, points: list[Point]) -> None:
        """Store the resolved sweep (axes, points, overrides) for `precopy report`."""
        data = {**sweep.to_dict(), "points": [p.to_dict() for p in points]}
        tmp = self.sweep_path.with_name(SWEEP + ".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(self.sweep_path)

    def append(self, result: PointResult) -> None:
        """Append one line, whole, and flush it to disk before returning."""
        line = (json.dumps(result.to_dict(), separators=(",", ":")) + "\n").encode()
        fd = os.open(self.results_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if _ends_without_newline(self.results_path):
                line = b"\n" + line  # a torn line from a killed sweep stays on its own
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ reading

    def read_sweep(self) -> tuple[Sweep, list[Point]] | None:
        """The stored sweep and its points, or None if there is none."""
        if not self.sweep_path.is_file():
            return None
        try:
            data = json.loads(self.sweep_path.read_text())
            return Sweep.from_dict(data), [Point.from_dict(p) for p in data.get("points", [])]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ExperimentError(f"{self.sweep_path}: unreadable ({err})") from None

    def read_results(self) -> dict[str, PointResult]:
        """Every point's latest line, by name, in the order first seen."""
        results: dict[str, PointResult] = {}
        self.skipped_lines = 0
        if not self.results_path.is_file():
            return results
        with open(self.results_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    result = PointResult.from_dict(json.loads(line))
                except (ValueError, TypeError, KeyError):
                    self.skipped_lines += 1
                    continue
                results[result.name] = result
        if self.skipped_lines:
            print(f"precopy: {self.results_path}: skipped {self.skipped_lines} unreadable "
                  "line(s) (a sweep killed while writing?)", file=sys.stderr)
        return results


def _ends_without_newline(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"
    except OSError:
        return False


def first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """The dotted path of the first place where *a* and *b* differ, or None if equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in [*a, *(k for k in b if k not in a)]:
            where = f"{path}.{key}" if path else str(key)
            if key not in a or key not in b:
                return where
            found = first_difference(a[key], b[key], where)
            if found is not None:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return path or "(top)"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = first_difference(x, y, f"{path}[{i}]")
            if found is not None:
                return found
        return None
    return None if a == b and type(a) is type(b) else (path or "(top)")
