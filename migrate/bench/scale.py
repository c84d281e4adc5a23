"""`precopy bench scale`: real migrations of growing guests, end to end, timed and weighed.

Each point is one migration exactly as `precopy run` makes it: a `precopy
dest` child started with `run`'s options (its store chosen by
`config.host.run_destination_store`), and a `precopy source` child sending
it every page's bytes over a real socket on 127.0.0.1, verified at the end.
Both are children of this process, reaped one at a time with `os.wait4`, so
each one's peak RSS is its own.

Points: the default workload scaled to 1, 8, 64 and 256 GiB (the same
writes per second per GiB, 4 vCPUs, tdp), and the default scenario as shipped
(link 10 Gbit/s) and on a 1 Gbit/s link. The wire moves real bytes, so a
run cannot go faster than its bytes through the loopback: the speedup
(virtual time over wall time) is at most `wire-bound`, the virtual time over
the time the loopback ceiling (one TCP stream, measured first) takes to carry
the bytes the run moved.

The scale points' migration parameters (`SCALE_SETTINGS`): at this write rate
per GiB no guest from ~2 GiB up converges at QEMU's 128 MiB/s (its hot set
alone, 3.75 % of memory, is more than the 38 MiB that 300 ms at 128 MiB/s
can send), so a second pass would resend about what the first sent and only
multiply the wall time; one pass (its end is the first sync after setup, where
max-iterations = 1 stops), then a forced stop-and-copy. max-time only has to let
that pass finish (the loop checks it at each of its passes): 256 GiB's first
pass is ~1,540 s of virtual time, under 30 min. max-bandwidth and
downtime-limit stay QEMU's.

A point that this host cannot hold (both processes together) is skipped,
with why; a point that fails is reported and the bench goes on. A full run
judges the issue's targets and exits 1 if one was missed or a point failed;
a quick run (1 and 8 GiB, and the default points) judges none.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

import migrate
from migrate import units
from migrate.config import ConfigError, Scenario, scenario_from_dict
from migrate.config.host import (
    available_memory_bytes,
    check_host_memory,
    memory_backing,
    run_destination_store,
)
from migrate.launch import DestinationProcess, run_destination_args
from vmmodel import PAGE_SIZE

GIB = 1 << 30
MB = 1e6
ROOT = Path(migrate.__file__).resolve().parent.parent  # the children run this checkout's code
RATE_PER_GIB = 25_000  # configs/default.toml's writes per second, for its 1 GiB
SCALE_GIB = (1, 8, 64, 256)
QUICK_SCALE_GIB = (1, 8)
SCALE_SETTINGS = (
    "migration.max-iterations=1",
    "migration.max-time=30min",
    "migration.on-no-convergence=force",
)
DEFAULT_LINKS = (("default", "10Gbit/s"), ("default-1gbit", "1Gbit/s"))
POINT_TIMEOUT_S = 3 * 3600.0  # a point still running after this is stopped and failed
DEST_EXIT_GRACE_S = 10.0  # the --once destination ends on its own once the migration ends
POLL_S = 0.05
CEILING_BYTES, QUICK_CEILING_BYTES = 256 << 20, 64 << 20
CEILING_SAMPLES = 3
TARGETS = {
    "default-speedup": 10.0,  # >= on configs/default.toml
    "default-1gbit-speedup": 10.0,  # >= on the default at 1 Gbit/s
    "64gib-speedup": 5.0,  # >=
    "64gib-wall-s": 180.0,  # <= (the source's process, start to exit)
    "64gib-peak-rss-bytes": 2 * GIB,  # <= each process
    "256gib-peak-rss-bytes": 6 * GIB,  # <= each process
    "source-rss-per-gib-bytes": 40 << 20,  # <= beyond a fixed base, tdp
}
EXIT_OK, EXIT_MISSED = 0, 1


@dataclass(frozen=True)
class Point:
    """One migration to run: a name and the `--set` overrides over configs/default.toml."""

    name: str
    overrides: tuple[str, ...] = ()
    scale_gib: int | None = None  # a scale point: the default workload at this size
    settings: tuple[str, ...] = field(default=(), compare=False)  # shown apart in the table

    @property
    def all_overrides(self) -> tuple[str, ...]:
        return (*self.overrides, *self.settings)


def scale_point(gib: int) -> Point:
    """The default workload at *gib* GiB: the same writes per second per GiB."""
    workload = (f"guest.memory={gib}GiB", f"guest.workload.rate={RATE_PER_GIB * gib}",
                "guest.vcpus=4", "mmu.shape=tdp")
    return Point(f"{gib}gib", workload, scale_gib=gib, settings=SCALE_SETTINGS)


def points(quick: bool = False) -> list[Point]:
    sizes = QUICK_SCALE_GIB if quick else SCALE_GIB
    return [*(scale_point(g) for g in sizes),
            *(Point(name, (f"link.bandwidth={link}",)) for name, link in DEFAULT_LINKS)]


# -- one point ----------------------------------------------------------------------------------


def _say(text: str) -> None:
    print(f"bench scale: {text}", file=sys.stderr, flush=True)


def _reap(proc: subprocess.Popen, deadline: float) -> tuple[int, int]:
    """Wait for *proc* until *deadline* (then SIGTERM, then SIGKILL); return its exit code
    and its peak RSS in bytes, from its own `wait4` rusage."""
    signals = [proc.terminate, proc.kill]
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            if signals:
                signals.pop(0)()
            deadline = time.monotonic() + DEST_EXIT_GRACE_S
        time.sleep(POLL_S)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss * 1024  # Linux: KiB


def _last_line(log: IO[str]) -> str:
    log.seek(0)
    lines = [line.strip() for line in log.read().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _scenario(point: Point) -> Scenario:
    return scenario_from_dict({}, point.all_overrides)


def _describe(point: Point, scenario: Scenario, store: str | None) -> dict[str, Any]:
    guest, link, m = scenario.guest, scenario.link, scenario.migration
    return {
        "name": point.name,
        "overrides": list(point.all_overrides),
        "memory-bytes": guest.memory_pages * PAGE_SIZE,
        "rate": guest.workload.rate,
        "vcpus": guest.vcpus,
        "link-bps": link.bandwidth_bps,
        "max-bandwidth-bps": m.max_bandwidth_bps,
        "backing": memory_backing(guest),
        "store": store,
    }


def run_point(point: Point, *, timeout_s: float = POINT_TIMEOUT_S) -> dict[str, Any]:
    """Run one migration as `precopy run` does, in two child processes; return its figures.

    Never raises for the migration's own failure: the result's `status` says
    `completed`, `failed`, `cancelled` or `skipped` (with `error` saying why).
    """
    try:
        scenario = _scenario(point)
    except ConfigError as err:
        return {"name": point.name, "status": "failed", "verified": False, "error": str(err)}
    available = available_memory_bytes()
    store = run_destination_store(scenario.guest, scenario.mmu, available)
    result = _describe(point, scenario, store)
    reason = check_host_memory(scenario.guest, scenario.mmu, available, destination=store)
    if reason:
        return {**result, "status": "skipped", "verified": None, "error": reason}
    npages = scenario.guest.memory_pages + scenario.guest.vga_pages
    with tempfile.TemporaryDirectory(prefix="precopy-scale-") as tmp:
        report_path = Path(tmp) / "report.json"
        with open(Path(tmp) / "source.log", "w+") as source_log, \
                open(Path(tmp) / "dest.log", "w+") as dest_log:
            try:
                dest = DestinationProcess(*run_destination_args(npages, store), stderr=dest_log,
                                          cwd=ROOT)
            except RuntimeError as err:
                return {**result, "status": "failed", "verified": False, "error": str(err)}
            try:
                sets = [arg for o in point.all_overrides for arg in ("--set", o)]
                started = time.monotonic()
                source = subprocess.Popen(
                    [sys.executable, "-m", "migrate", "source", "--dest", dest.url, "--quiet",
                     "--json", str(report_path), *sets],
                    cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=source_log)
                source_code, source_rss = _reap(source, started + timeout_s)
                process_wall_s = time.monotonic() - started
                dest_code, dest_rss = _reap(dest.proc, time.monotonic() + DEST_EXIT_GRACE_S)
            finally:
                dest.stop()
            result.update({
                "process-wall-s": process_wall_s,
                "source-peak-rss-bytes": source_rss,
                "destination-peak-rss-bytes": dest_rss,
                "source-exit": source_code,
                "destination-exit": dest_code,
            })
            if not report_path.exists():
                why = _last_line(source_log) or f"the source exited {source_code} with no report"
                if process_wall_s > timeout_s:
                    why = f"stopped after {timeout_s:g} s (point timeout)"
                return {**result, "status": "failed", "verified": False, "error": why}
            report = json.loads(report_path.read_text())
            if source_code and not report.get("error"):
                report["error"] = _last_line(source_log) or _last_line(dest_log)
    return {**result, **_figures(report)}


def _figures(report: dict[str, Any]) -> dict[str, Any]:
    wall = report.get("wall-time-s") or 0.0
    virtual_s = (report.get("total-time") or 0.0) / 1e3
    ram = report.get("ram", {})
    return {
        "status": report.get("status"),
        "verified": report.get("verified") is True,
        "error": report.get("error"),
        "switchover": report.get("switchover"),
        "passes": len(report.get("rounds", [])),
        "total-time-ms": report.get("total-time"),
        "downtime-ms": report.get("downtime"),
        "wall-time-s": wall,
        "speedup": virtual_s / wall if wall else None,
        "transferred-bytes": ram.get("transferred"),
        "verify-wall-ms": report.get("verify-wall-ms"),
    }


# -- the bench ----------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loopback_ceiling(nbytes: int) -> float:
    """MB/s of random bytes through one blocking TCP stream to another process (bench wire's
    ceiling), the median of `CEILING_SAMPLES`."""
    from migrate.bench.wire import Ceiling, random_memory

    ceiling = Ceiling(random_memory(nbytes // 4096))
    try:
        rates = [ceiling.sample() for _ in range(CEILING_SAMPLES)]
    finally:
        ceiling.close()
    return sorted(rates)[len(rates) // 2]


def run(quick: bool = False, points_to_run: Sequence[Point] | None = None,
        timeout_s: float = POINT_TIMEOUT_S) -> dict[str, Any]:
    """Run every point, one after another; return the figures as one plain dict."""
    chosen = list(points_to_run) if points_to_run is not None else points(quick)
    # A child's ru_maxrss starts at this process's peak RSS (Linux carries the parent's
    # high-water mark across fork and exec), so nothing big is allocated here before the
    # points have run: the loopback ceiling comes last.
    floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    results = []
    for i, point in enumerate(chosen, 1):
        _say(f"[{i}/{len(chosen)}] {point.name}: {' '.join(point.overrides) or 'as shipped'} ...")
        results.append(run_point(point, timeout_s=timeout_s))
        _say(f"[{i}/{len(chosen)}] {point.name}: {_outcome(results[-1])}")
    ceiling = loopback_ceiling(QUICK_CEILING_BYTES if quick else CEILING_BYTES)
    _say(f"loopback ceiling {ceiling:,.0f} MB/s")
    for r in results:
        moved, total = r.get("transferred-bytes"), r.get("total-time-ms")
        r["wire-bound"] = (total / 1e3 / (moved / (ceiling * MB))) if moved and total else None
    result: dict[str, Any] = {
        "rss-floor-bytes": floor,
        "quick": quick,
        "points": results,
        "scale-settings": list(SCALE_SETTINGS),
        "rate-per-gib": RATE_PER_GIB,
        "loopback-mb-per-s": ceiling,
        "targets": dict(TARGETS),
        "cpu": _cpu_model(),
        "cpu-count": os.cpu_count(),
        "memory-available-bytes": available_memory_bytes(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    result["source-rss-per-gib-bytes"] = source_rss_per_gib(results)
    result["met"] = judge(result)
    return result


def _outcome(r: dict[str, Any]) -> str:
    if r["status"] == "skipped":
        return f"skipped: {r['error']}"
    head = f"{r['status']}, verified {'yes' if r.get('verified') else 'NO'}"
    if "process-wall-s" not in r:
        return f"{head}: {r.get('error')}"
    text = (f"{head}, {r['process-wall-s']:.1f} s wall, peak RSS "
            f"{_mib(r['source-peak-rss-bytes'])} / {_mib(r['destination-peak-rss-bytes'])} MiB")
    if r.get("speedup") is not None:
        text += f", {r['total-time-ms'] / 1e3:.1f} s virtual ({r['speedup']:.2f}x)"
    return text + (f": {r['error']}" if r.get("error") else "")


def _ok(r: dict[str, Any]) -> bool:
    return r.get("status") == "completed" and r.get("verified") is True


def source_rss_per_gib(results: Sequence[dict[str, Any]]) -> float | None:
    """The source's peak RSS per GiB of guest beyond a fixed base: the slope between the
    smallest and the largest scale point that completed (None with fewer than two)."""
    done = sorted((r["memory-bytes"], r["source-peak-rss-bytes"]) for r in results
                  if _ok(r) and r["name"].endswith("gib") and "source-peak-rss-bytes" in r)
    if len(done) < 2 or done[-1][0] == done[0][0]:
        return None
    (m0, r0), (m1, r1) = done[0], done[-1]
    return (r1 - r0) / ((m1 - m0) / GIB)


def judge(result: dict[str, Any]) -> dict[str, bool | None]:
    """Each target's verdict: None on a quick run, or when its point did not complete."""
    met: dict[str, bool | None] = dict.fromkeys(TARGETS)
    if result.get("quick"):
        return met
    by_name = {r["name"]: r for r in result["points"] if _ok(r)}

    def peak(r: dict[str, Any]) -> int:
        return max(r["source-peak-rss-bytes"], r["destination-peak-rss-bytes"])

    for key, name in (("default-speedup", "default"), ("default-1gbit-speedup", "default-1gbit"),
                      ("64gib-speedup", "64gib")):
        if name in by_name:
            met[key] = by_name[name]["speedup"] >= TARGETS[key]
    if "64gib" in by_name:
        met["64gib-wall-s"] = by_name["64gib"]["process-wall-s"] <= TARGETS["64gib-wall-s"]
        met["64gib-peak-rss-bytes"] = peak(by_name["64gib"]) <= TARGETS["64gib-peak-rss-bytes"]
    if "256gib" in by_name:
        met["256gib-peak-rss-bytes"] = peak(by_name["256gib"]) <= TARGETS["256gib-peak-rss-bytes"]
    slope = result.get("source-rss-per-gib-bytes")
    if slope is not None:
        met["source-rss-per-gib-bytes"] = slope <= TARGETS["source-rss-per-gib-bytes"]
    return met


def exit_code(result: dict[str, Any]) -> int:
    """1 if a point failed (a skipped one has not) or a full run missed a target, else 0."""
    failed = any(r["status"] != "skipped" and not _ok(r) for r in result["points"])
    missed = any(v is False for v in result["met"].values())
    return EXIT_MISSED if failed or missed else EXIT_OK


# -- the table ----------------------------------------------------------------------------------


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / (1 << 20):,.0f}"


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def format_table(result: dict[str, Any]) -> str:
    settings = ", ".join(s.split(".", 1)[1].replace("=", " ") for s in result["scale-settings"])
    lines = [
        f"precopy bench scale: migrations end to end (precopy source -> precopy dest, as precopy "
        f"run starts them), 127.0.0.1, {result['cpu-count']} CPUs ({result['cpu']})",
        f"scale points (NNgib): the default workload at NN GiB, "
        f"{result['rate-per-gib']:,} writes/s per GiB, 4 vCPUs, tdp; {settings}; "
        "max-bandwidth 128MiB/s, downtime-limit 300ms (QEMU's)",
        "default: configs/default.toml as shipped (link 10 Gbit/s); default-1gbit: link 1 Gbit/s",
        f"loopback ceiling: {result['loopback-mb-per-s']:,.0f} MB/s (one TCP stream); wire bound: "
        "the speedup if the run's bytes crossed at that rate and nothing else took time",
        "",
        f"{'point':<14} {'guest':>7} {'store':>7} {'wall s':>7} {'virtual s':>9} "
        f"{'speedup':>7} {'bound':>6} {'src MiB':>8} {'dst MiB':>8} {'moved GB':>9} "
        f"{'passes':>6}  {'verified':<8} status",
    ]
    for r in result["points"]:
        guest = units.format_bytes(r["memory-bytes"]) if "memory-bytes" in r else "?"
        if r["status"] == "skipped":
            lines.append(f"{r['name']:<14} {guest:>7} {'':>7} skipped: {r['error']}")
            continue
        total = r.get("total-time-ms")
        moved = r.get("transferred-bytes")
        verified = {True: "yes", False: "NO", None: "-"}[r.get("verified")]
        status = r["status"] + (f" ({r['switchover']})" if r.get("switchover") else "")
        lines.append(
            f"{r['name']:<14} {guest:>7} {r.get('store') or '-':>7} "
            f"{_num(r.get('wall-time-s'), '.1f'):>7} {_num(total and total / 1e3, '.1f'):>9} "
            f"{_num(r.get('speedup'), '.2f'):>7} {_num(r.get('wire-bound'), '.1f'):>6} "
            f"{_mib(r.get('source-peak-rss-bytes')):>8} "
            f"{_mib(r.get('destination-peak-rss-bytes')):>8} "
            f"{_num(moved and moved / 1e9, ',.2f'):>9} {r.get('passes', '-'):>6}  "
            f"{verified:<8} {status}")
        if r.get("error"):
            lines.append(f"{'':<14} error: {r['error']}")
    slope = result.get("source-rss-per-gib-bytes")
    lines += [
        "",
        "wall s: the migration's wall time (the report's wall-time-s: prefill to verified); "
        "the source process took "
        + ", ".join(f"{r['name']} {r['process-wall-s']:.1f} s" for r in result["points"]
                    if "process-wall-s" in r) + " from start to exit",
        "speedup: virtual (total-time) / wall; src, dst MiB: each process's peak RSS (wait4)",
        "source RSS per GiB of guest beyond a fixed base: "
        + ("-" if slope is None else f"{slope / (1 << 20):.1f} MiB"),
    ]
    met = result["met"]
    verdicts = {None: "not judged", True: "met", False: "NOT met"}
    lines.append("targets: " + "; ".join(f"{k} {verdicts[met[k]]}" for k in TARGETS))
    if result.get("quick"):
        lines.append("(a quick run judges no target: run without --quick)")
    elif exit_code(result) != EXIT_OK:
        lines.append(f"a point failed or a target was missed: exit {EXIT_MISSED}")
    return "\n".join(lines)
