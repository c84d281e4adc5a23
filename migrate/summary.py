"""What a person reads: one progress line per sync interval, and the summary table at the end."""

from __future__ import annotations

from migrate.report import Report, RoundRecord, config_value
from migrate.units import MIB

STOP_AND_COPY = "stop-and-copy"
FORCED = "precopy did not converge: switchover forced"


def forced_note(report: Report) -> str:
    """Why a forced run's downtime is over the limit, in words (empty if it converged)."""
    if not report.forced:
        return ""
    syncs = report.ram.dirty_sync_count - 2  # less the setup's and the completion's
    return f"{FORCED} after {syncs} sync{'s' * (syncs != 1)} (on-no-convergence = force)"


def progress_line(r: RoundRecord) -> str:
    """One sync interval. The sync that ends a precopy interval finds the pages it adds to
    those still to send; the stop-and-copy's final sync finds pages it sends itself, and its
    downtime is measured."""
    h = r.harvest
    if r.phase == STOP_AND_COPY:
        found = f"final sync {h.nr_dirty_pages:>8,} dirty (sent in this round), "
        downtime = f"downtime {r.expected_downtime_ms:>8.1f} ms"
    else:
        found = f"sync {h.nr_dirty_pages:>8,} dirty, "
        downtime = f"expected downtime {r.expected_downtime_ms:>8.1f} ms"
    return (
        f"{r.phase:>13} {r.pass_no:>3}: {r.pages_sent:>9,} pages {r.bytes / MIB:>8.1f} MiB "
        f"in {r.duration_ms:>8.1f} ms ({r.bandwidth / MIB:>6.1f} MiB/s), {found}{downtime}, "
        f"harvest {h.branch or '?'} {round(h.kernel_ns) / 1e3:.1f} us"
    )


def _us(ns: float) -> str:
    """Whole nanoseconds (as the report stores them) in microseconds."""
    return f"{round(ns) / 1e3:,.1f}"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    def fmt(row: list[str]) -> str:
        return "  ".join(str(x).rjust(w) for x, w in zip(row, widths, strict=True))
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows)])


def summary_table(report: Report) -> str:
    ram, guest = report.ram, report.guest
    def config(dotted: str) -> object:
        return config_value(report, dotted, "?")

    verdict = "yes" if report.verified else "NO"
    why = [text for text in (report.error, forced_note(report)) if text]
    lines = [
        f"status           {report.status}" + (f" ({'; '.join(why)})" if why else ""),
        f"verified         {verdict}"
        + (f", {report.lost_count} lost pages: {report.lost_pages[:10]}"
           + (" ..." if report.lost_count > 10 else "") if report.lost_pages else ""),
        f"scenario         {config('guest.memory')} guest, "
        f"{config('guest.workload.kind')} workload, {config('mmu.shape')} MMU, "
        f"{config('mmu.strategy')} harvest, {report.clock} clock, seed {report.seed}",
        f"total-time       {report.total_time_ms:,.1f} ms (setup {report.setup_time_ms:,.1f} ms)",
        f"downtime         {report.downtime_ms:,.1f} ms "
        f"(expected {report.expected_downtime_ms:,.1f} ms)",
        f"transferred      {ram.transferred / MIB:,.1f} MiB: {ram.normal:,} normal pages, "
        f"{ram.duplicate:,} zero pages; precopy {ram.precopy_bytes / MIB:,.1f} MiB, "
        f"downtime {ram.downtime_bytes / MIB:,.1f} MiB"
        # compressed-bytes is the output of lz4 (the batches it shrank), not its input
        + (f"; lz4 {ram.compression_ratio:.2f}x smaller, the batches it shrank "
           f"{ram.compressed_bytes / MIB:,.1f} MiB on the wire" if ram.compressed_bytes else ""),
        f"dirty-sync-count {ram.dirty_sync_count} (QEMU {report.qemu_version or '?'}'s loop, "
        f"{report.complete_rounds} complete rounds), mbps {ram.mbps:,.1f}, "
        f"dirty-pages-rate {ram.dirty_pages_rate:,.0f}",
        f"guest            {guest.writes:,} writes, {guest.write_faults:,} write faults, "
        f"{round(guest.vcpu_stall_ns) / 1e6:,.2f} ms vCPU stall on mmu_lock"
        # QEMU's cpu-throttle-percentage is the share of time taken away from the vCPUs
        + (f", auto-converge cpu-throttle-percentage {report.cpu_throttle_percentage} % "
           f"(vCPUs ran {100 - report.cpu_throttle_percentage} % of the time)"
           if report.cpu_throttle_percentage else ""),
        f"wall time        {report.wall_time_s:.2f} s",
        "",
    ]
    rows = [
        [str(r.pass_no), r.phase, f"{r.dirty_pages:,}", f"{r.bytes / MIB:,.1f}",
         f"{r.start_ms:,.1f}", f"{r.duration_ms:,.1f}", f"{r.bandwidth / MIB:,.1f}",
         f"{r.expected_downtime_ms:,.1f}" + ("*" if r.phase == STOP_AND_COPY else ""),
         r.harvest.branch, _us(r.harvest.kernel_ns), f"{r.faults:,}",
         f"{r.vcpu_stall_ns / 1e6:,.3f}"]
        for r in report.rounds
    ]
    header = ["round", "phase", "pages", "MiB", "start ms", "ms", "MiB/s", "exp. down ms",
              "harvest", "harvest us", "faults", "stall ms"]
    notes = []
    if any(r.phase == STOP_AND_COPY for r in report.rounds):
        notes.append("* the stop-and-copy's actual downtime (pause to resumed); its pages "
                     "include those of the final sync")
    return "\n".join([*lines[:-1], _table(rows, header), *notes])
