"""`precopy sweep`: validate a sweep, then run its points in parallel, resumably.

Each point is one `precopy run` process (which starts its own destination
process and migrates to it over aiohttp on 127.0.0.1), so a point is exactly
what a person gets by pasting its command. Up to `jobs` points run at once.
Each finished point is appended to `results.jsonl` as it finishes; a sweep
started again skips the points that have a result. Interrupted (Ctrl-C,
SIGTERM), it stops the running points' process groups and records nothing
for them.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from migrate.config import Scenario
from migrate.experiments import ExperimentError
from migrate.experiments.progress import Progress, format_duration
from migrate.experiments.results import (
    ERROR,
    PointResult,
    ResultsFolder,
    code_version,
    first_difference,
    now_iso,
)
from migrate.experiments.sweep import Point, Sweep, load_sweep
from migrate.report import Report

EXIT_OK, EXIT_FAILED = 0, 1
POINT_TIMEOUT_S = 1800.0
STOP_GRACE_S = 10.0
TMP = "tmp"
LOGS = "logs"


def default_jobs() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_out(sweep_path: str | Path) -> Path:
    return Path("results") / Path(sweep_path).stem


def run_sweep(sweep_path: str | Path, out: str | Path | None = None, *, jobs: int | None = None,
              limit: int | None = None, dry_run: bool = False,
              point_timeout_s: float = POINT_TIMEOUT_S, stream: TextIO | None = None) -> int:
    """Run the sweep at *sweep_path* into *out*; return the exit code.

    0 when every point with a result completed and verified, 1 otherwise (or
    when interrupted). Raise `ConfigError` for a sweep or a point that does
    not load and `ExperimentError` for an unusable output folder, before
    anything runs.
    """
    stream = stream or sys.stdout
    jobs = default_jobs() if jobs is None else jobs
    if jobs < 1:
        raise ExperimentError(f"--jobs {jobs}: at least 1")
    if limit is not None and limit < 1:
        raise ExperimentError(f"--limit {limit}: at least 1")
    if not (point_timeout_s > 0 and math.isfinite(point_timeout_s)):  # nan is neither
        raise ExperimentError(f"--point-timeout: {point_timeout_s:g} is not a positive, "
                              "finite number of seconds")
    sweep = load_sweep(sweep_path)
    points = sweep.points()
    scenarios = sweep.validate()
    _warn_duplicates(points, scenarios)
    if dry_run:
        _print_plan(sweep, points, stream)
        return EXIT_OK
    folder = ResultsFolder(out if out is not None else default_out(sweep_path))
    folder.open_for_sweep()
    try:
        results = folder.read_results()
        _check_same_sweep(folder, sweep, points, results)
        _check_unchanged(folder, points, scenarios, results)
        folder.write_sweep(sweep, points)
        todo = [p for p in points if not (p.name in results and results[p.name].done)]
        done = len(points) - len(todo)
        if limit is not None:
            todo = todo[:limit]
        print(_header(sweep, sweep_path, points, done, len(todo), jobs, folder), file=stream,
              flush=True)
        progress = Progress(done + len(todo), done, stream=stream)
        runner = Runner(sweep, folder, jobs=jobs, point_timeout_s=point_timeout_s,
                        progress=progress)
        older = sorted({r.code for r in results.values() if r.done and r.code != runner.code})
        if older and todo:
            print(f"precopy: warning: {folder.path} holds points run by other code "
                  f"({', '.join(older)}; this is {runner.code}); they may not compare",
                  file=sys.stderr)
        wall_start = time.monotonic()
        new = asyncio.run(runner.run(todo))
        elapsed_s = time.monotonic() - wall_start
        results.update({r.name: r for r in new})
    finally:
        folder.close()
    return _closing(points, results, runner, folder, len(todo), elapsed_s, stream)


class Runner:
    """Runs points as `precopy run` processes, `jobs` at a time."""

    def __init__(self, sweep: Sweep, folder: ResultsFolder, *, jobs: int,
                 point_timeout_s: float, progress: Progress) -> None:
        self.sweep = sweep
        self.folder = folder
        self.jobs = jobs
        self.point_timeout_s = point_timeout_s
        self.progress = progress
        self.results: list[PointResult] = []
        self.interrupted = False
        self.tmp = folder.path / TMP
        self.code = code_version()

    async def run(self, points: list[Point]) -> list[PointResult]:
        """Run *points*; on SIGINT/SIGTERM stop them all and return what finished."""
        if not points:
            return []
        self.tmp.mkdir(exist_ok=True)
        loop = asyncio.get_running_loop()
        main = asyncio.current_task()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._interrupt, main)
        ticker = asyncio.create_task(self._tick()) if self.progress.tty else None
        queue = iter(points)  # shared by the workers: one event loop, no races
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(self.jobs, len(points))):
                    group.create_task(self._worker(queue))
        except asyncio.CancelledError:
            self.interrupted = True
        except BaseExceptionGroup as group:  # say what went wrong, not "a TaskGroup failed"
            raise group.exceptions[0] from None
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            if ticker is not None:
                ticker.cancel()
            self.progress.close()
            try:
                self.tmp.rmdir()
            except OSError:
                pass  # not empty: something to look at
        return self.results

    def _interrupt(self, main: asyncio.Task | None) -> None:
        self.interrupted = True
        if main is not None:
            main.cancel()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.progress.draw()

    async def _worker(self, queue: Iterator[Point]) -> None:
        for point in queue:
            result = await self.run_point(point)
            self.folder.append(result)  # before anything else can interrupt us
            self.results.append(result)
            self.progress.finish(result)

    async def run_point(self, point: Point) -> PointResult:
        """Run one point to its result (a migration that failed is a result too)."""
        report_path = self.tmp / f"{point.name}.json"
        report_path.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "migrate", "run", *self.sweep.run_command(point, shown=False),
                "--quiet", "--json", str(report_path)]
        result = PointResult(name=point.name, params=point.params, code=self.code,
                             command=self.sweep.shell_command(point), started=now_iso())
        wall_start = time.monotonic()
        self.progress.start(point.name)
        # Its own session: a Ctrl-C reaches the sweep only, which then stops the
        # point's process group (the `run` process and its destination) itself.
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, start_new_session=True,
        )
        # stderr is read as it comes, so a point stopped at --point-timeout keeps its log.
        stderr = asyncio.ensure_future(proc.stderr.read())
        timed_out = False
        try:
            await asyncio.wait_for(proc.wait(), self.point_timeout_s)
        except TimeoutError:
            timed_out = True
            await _stop(proc)
        except asyncio.CancelledError:
            await _stop(proc)
            stderr.cancel()
            self.progress.abandon(point.name)
            report_path.unlink(missing_ok=True)
            raise
        result.finished = now_iso()
        result.wall_time_s = round(time.monotonic() - wall_start, 3)
        result.exit_code = proc.returncode
        try:
            err = await asyncio.wait_for(asyncio.shield(stderr), STOP_GRACE_S)
        except TimeoutError:  # a child left behind still holds the pipe
            await _stop(proc)
            err = await stderr
        self._fill(result, report_path, err.decode(errors="replace"), timed_out)
        return result

    def _fill(self, result: PointResult, report_path: Path, stderr: str, timed_out: bool) -> None:
        report = None
        if not timed_out and report_path.is_file():
            try:
                data = json.loads(report_path.read_text())
                if isinstance(data, dict) and "status" in data:
                    report = Report.from_dict(data)
            except (ValueError, TypeError):
                report = None  # not a report of ours: the run gave no result
        # A point stopped at its timeout may still have written a (cancelled) report: not a
        # result, and nothing to leave in tmp/.
        report_path.unlink(missing_ok=True)
        if report is not None:
            result.report = report
            result.status = result.report.status
            result.verified = result.report.verified is True
            result.error = result.report.error
        else:
            lines = [line for line in stderr.splitlines() if line.strip()]
            result.status = ERROR
            if timed_out:
                result.error = f"no result after {self.point_timeout_s:g} s; stopped"
            else:
                result.error = lines[-1] if lines else f"exit code {result.exit_code}, no report"
        if not result.done or (stderr.strip() and not result.ok):
            # The closing lines send the reader here for every point without a result.
            logs = self.folder.path / LOGS
            logs.mkdir(exist_ok=True)
            tail = "" if result.done else f"precopy sweep: {result.error}\n"
            (logs / f"{result.name}.log").write_text(f"$ {result.command}\n{stderr}{tail}")


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM the point's process group (a `run` cancels cleanly on it), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            await asyncio.shield(asyncio.wait_for(proc.wait(), STOP_GRACE_S))
            break
        except TimeoutError:
            continue
    try:  # the destination may outlive its `run` parent by a moment
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# --------------------------------------------------------------------------- messages


def _warn_duplicates(points: list[Point], scenarios: dict[str, Scenario]) -> None:
    seen: dict[str, str] = {}
    for point in points:
        key = json.dumps(scenarios[point.name].to_dict(), sort_keys=True)
        if key in seen:
            print(f"precopy: warning: points {seen[key]} and {point.name} run the same scenario "
                  "(an axis that changes nothing?)", file=sys.stderr)
        else:
            seen[key] = point.name


def _check_same_sweep(folder: ResultsFolder, sweep: Sweep, points: list[Point],
                      results: dict[str, PointResult]) -> None:
    """Refuse a folder holding results of points this sweep does not have.

    They would be reported beside this sweep's ("10 of 9 points have results"). A name
    that an older precopy spelled without hyphens (`rmapnoflush` for `rmap-noflush`) is
    named as such: it is not silently run again as a new point.
    """
    names = {p.name for p in points}
    stray = [name for name in results if name not in names]
    if not stray:
        return
    start_over = (f"use another --out folder, or remove {folder.results_path} to start over")
    renamed = {sweep.legacy_name(p): p.name for p in points}
    for name in stray:
        if name in renamed:
            raise ExperimentError(
                f"--out {folder.path}: point {renamed[name]} is stored there as {name}, its "
                f"name before point names kept hyphens; {start_over}")
    more = f" and {len(stray) - 1} more" if len(stray) > 1 else ""
    raise ExperimentError(
        f"--out {folder.path}: it holds results of another sweep (point {stray[0]}{more}, "
        f"not in {sweep.source}); {start_over}")


def _check_unchanged(folder: ResultsFolder, points: list[Point], scenarios: dict[str, Scenario],
                     results: dict[str, PointResult]) -> None:
    """Refuse to mix results of one name run with two different scenarios."""
    for point in points:
        done = results.get(point.name)
        if done is None or done.report is None:
            continue
        now = json.loads(json.dumps(scenarios[point.name].to_dict()))
        where = first_difference(done.report.config, now)
        if where is not None:
            raise ExperimentError(
                f"--out {folder.path}: point {point.name} was run there with a different "
                f"scenario ({where} differs); use another --out folder, or remove "
                f"{folder.results_path} to start over"
            )


def _plan_shape(sweep: Sweep, points: list[Point]) -> str:
    sizes = [f"{len(v)} {k}" for k, v in sweep.axis_values().items()]
    return f"{len(points)} points" + (f" ({' x '.join(sizes)})" if sizes else "")


def _header(sweep: Sweep, sweep_path: str | Path, points: list[Point], done: int, to_run: int,
            jobs: int, folder: ResultsFolder) -> str:
    text = f"sweep {sweep_path}: {_plan_shape(sweep, points)}"
    if done:
        text += f"; {done} already done in {folder.path}"
    if to_run:
        text += f"; running {to_run} with {min(jobs, to_run)} job{'s' * (min(jobs, to_run) > 1)}"
    else:
        text += "; nothing to run"
    return text


def _print_plan(sweep: Sweep, points: list[Point], stream: TextIO) -> None:
    print(f"{_plan_shape(sweep, points)}; every scenario loads", file=stream)
    width = max(len(p.name) for p in points)
    for point in points:
        print(f"{point.name:<{width}}  {sweep.shell_command(point)}", file=stream)


def _closing(points: list[Point], results: dict[str, PointResult], runner: Runner,
             folder: ResultsFolder, ran: int, elapsed_s: float, stream: TextIO) -> int:
    names = [p.name for p in points]
    have = [results[n] for n in names if n in results and results[n].done]
    errors = [results[n] for n in names if n in results and not results[n].done]
    not_ok = [r for r in have if not r.ok]
    missing = len(names) - len(have)
    lines = []
    if runner.interrupted:
        lines.append(f"interrupted: {len(runner.results)} of {ran} points finished in this run; "
                     "run the same command again to continue")
    text = f"{len(have)} of {len(names)} points have results: {len(have) - len(not_ok)} ok"
    if not_ok:
        shown = ", ".join(f"{r.name} ({r.status}{'' if r.verified else ', unverified'})"
                          for r in not_ok[:5])
        text += f", {len(not_ok)} not ok: {shown}" + (" ..." if len(not_ok) > 5 else "")
    lines.append(text)
    for r in errors:
        lines.append(f"no result for {r.name}: {r.error} (see {folder.path / LOGS}; "
                     "it is retried on the next run)")
    if missing and not runner.interrupted and not errors:
        lines.append(f"{missing} points left: run the same command again to continue")
    if runner.results:
        busy = sum(r.wall_time_s for r in runner.results)
        n = len(runner.results)
        lines.append(f"ran {n} point{'s' * (n != 1)} in {format_duration(elapsed_s)} "
                     f"({format_duration(busy)} of point wall time)")
    lines.append(f"results: {folder.results_path}; next: precopy report {folder.path}")
    print("\n".join(lines), file=stream, flush=True)
    bad = not_ok or errors or runner.interrupted
    return EXIT_FAILED if bad else EXIT_OK
