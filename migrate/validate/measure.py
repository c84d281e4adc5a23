"""The reference host's QEMU costs, measured from its own recorded migrations.

Each constant of `migrate.config.costs.QemuCosts` is measured here from the
traces' figures alone (the `query-migrate` polls every 100 ms, the QMP
events, the final answer), by the method its function's docstring gives.
`costs_toml` writes configs/costs/qemu/qemu-7.2-tcg.toml from the
measurements, each value rounded to its `step` and commented with how it was
measured; tests/test_validate.py measures again from the shipped traces and
checks that the table still says what they say.

What a poll can tell: `transferred` and the `normal`/`duplicate` page
counters between two polls are what the migration thread sent in that
interval; `remaining` jumps at a sync by the pages it found newly dirty;
a poll that falls during a sync waits for the BQL the sync holds, so it
comes late and answers just after it (the MIGRATION_PASS event of that
sync is stamped at its end, `migration_bitmap_sync`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from migrate.config import CONFIGS_DIR
from migrate.validate.records import RunRecord, read_records
from vmmodel import PAGE_SIZE

GIB = 1 << 30
WINDOW_S = 0.1  # QEMU's BUFFER_DELAY: the rate limit's window and the bandwidth's
POLL_SLACK_S = 0.005  # a poll this close to a window's length is a full window's
# The harness's clock (polls, `t`) and QEMU's (events, `t_qemu`) share an origin within a
# millisecond or two: the `setup` event is stamped 0.000 by QEMU and seen at 0.001.
CLOCK_SLACK_S = 0.002
LATE_POLL_S = 0.005  # a poll answered within this of a sync's end waited for it
# Below this many pages a completion's time is mostly its fixed part (vm_stop, the final
# sync, the device state): those completions do not weigh the per-page cost.
MIN_COMPLETION_PAGES = 5000
MIN_ZERO_PAGES = 10_000  # a window's zero pages must be this many to show their cost
REFERENCE_RUNS = CONFIGS_DIR / "reference" / "qemu-7.2-tcg" / "runs.jsonl"
REFERENCE_COSTS = CONFIGS_DIR / "costs" / "qemu" / "qemu-7.2-tcg.toml"


@dataclass(frozen=True)
class Measurement:
    """One constant as measured: its value, what the table rounds it to, and how."""

    name: str  # the QemuCosts field
    value_ns: float
    step_ns: float  # the table's rounding
    samples: int
    runs: tuple[str, ...]
    method: str  # how, in a sentence or two (the TOML's comment)
    spread: str = ""  # the samples' range, or the fit's residual

    @property
    def rounded_ns(self) -> float:
        """The value to the nearest step (halves up)."""
        return math.floor(self.value_ns / self.step_ns + 0.5) * self.step_ns


@dataclass(frozen=True)
class SyncSample:
    """One sync while the guest ran: when it began and ended, what it found."""

    run: str
    pass_no: int
    start_s: float
    end_s: float
    found_pages: int  # the jump in `remaining` across it: pages newly dirty

    @property
    def stall_ms(self) -> float:
        return (self.end_s - self.start_s) * 1e3


@dataclass
class Fit:
    """A straight line y = intercept + slope x by least squares, with its residual."""

    intercept: float
    slope: float
    residual_sd: float
    n: int
    x_range: tuple[float, float] = field(default=(0.0, 0.0))


def fit_line(x: Sequence[float], y: Sequence[float]) -> Fit:
    """Raise `ValueError` with fewer than three points or a single x."""
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(xs) < 3 or np.ptp(xs) == 0:
        raise ValueError(f"a line needs three points or more at two x or more (have {len(xs)})")
    a = np.vstack([np.ones_like(xs), xs]).T
    (intercept, slope), *_ = np.linalg.lstsq(a, ys, rcond=None)
    resid = ys - a @ np.array([intercept, slope])
    return Fit(float(intercept), float(slope), float(np.std(resid, ddof=2)), len(xs),
               (float(xs.min()), float(xs.max())))


def _names(records: Sequence[RunRecord]) -> tuple[str, ...]:
    return tuple(r.name for r in records)


def _windows(record: RunRecord) -> list[tuple[int, int]]:
    """Pairs of consecutive active polls (i, i+1), both in the first pass (before any sync
    but setup's), a full window apart: what the migration thread sent in 100 ms."""
    p = record.progress
    active = p.active()
    syncs = p["dirty-sync-count"]
    out = []
    for i in range(len(p) - 1):
        if not (active[i] and active[i + 1]) or syncs[i] != 1 or syncs[i + 1] != 1:
            continue
        if abs(p.t[i + 1] - p.t[i] - WINDOW_S) <= POLL_SLACK_S:
            out.append((i, i + 1))
    return out


def _budget(record: RunRecord) -> float:
    """The rate limit's bytes per window: max-bandwidth / 10 (`XFER_LIMIT_RATIO`)."""
    return record.parameters.max_bandwidth_bytes_s * WINDOW_S


def _unlimited_windows(record: RunRecord) -> list[tuple[float, int, int]]:
    """(seconds, normal pages, zero pages) of the first pass's windows that carried less
    than 95 % of the rate limit's budget: the thread sent as fast as it could."""
    p = record.progress
    out = []
    for i, j in _windows(record):
        sent = p["transferred"][j] - p["transferred"][i]
        if sent < 0.95 * _budget(record):
            out.append((float(p.t[j] - p.t[i]), int(p["normal"][j] - p["normal"][i]),
                        int(p["duplicate"][j] - p["duplicate"][i])))
    return out


def is_rate_limited(record: RunRecord) -> bool:
    """Whether the first pass ran at the rate limit: every full window carried the budget
    (then the thread sleeps out each window, and the windows' phase is predictable)."""
    p = record.progress
    windows = _windows(record)
    return bool(windows) and all(
        p["transferred"][j] - p["transferred"][i] >= _budget(record) for i, j in windows)


# ------------------------------------------------------------------------ the constants


def measure_setup(records: Sequence[RunRecord]) -> Measurement:
    """setup_ns: the median of the completed runs' `setup-time` (QEMU's own figure, from
    `migrate` to the end of `qemu_savevm_state_setup`: ram_init_bitmaps, whose setup sync
    under TCG takes every page's per-page path). The model's own part of setup (KVM
    enabling dirty logging, the setup sync's harvest: well under a millisecond for 1 GiB)
    is left in: it is within the rounding."""
    runs = [r for r in records if r.completed]
    values = np.array([r.result.setup_time_ms for r in runs])
    return Measurement(
        "setup_ns", float(np.median(values)) * 1e6, 10e6, len(values), _names(runs),
        "median of result.setup_time_ms over the completed runs",
        f"{values.min():.0f}-{values.max():.0f} ms")


HOLD_MATCH = 0.05  # a guest's longest gap within 5 % of the setup's length is the setup


def measure_holds(records: Sequence[RunRecord]) -> Measurement:
    """sync_holds_vcpus: 1 if the guest stops while QEMU's setup runs (the BQL, which a
    TCG vCPU waits for: setup and each sync take it), else 0.

    The evidence: in every completed run with a dirtier and no auto-converge (whose
    throttle sleeps are longer), the guest's own longest gap between ticks
    (`guest_src.maxgap_us_during`) is the setup's length (`setup-time`) within
    `HOLD_MATCH`; a guest that ran through the setup would tick every millisecond.
    """
    runs = [r for r in records if r.completed and r.config.rate_pages_s > 0
            and not r.config.auto_converge and r.guest_src.maxgap_us_during is not None]
    if not runs:
        raise ValueError("no completed run with a dirtier to tell whether setup stops it")
    ratios = np.array([r.guest_src.maxgap_us_during / 1e3 / r.result.setup_time_ms
                       for r in runs])
    held = bool(np.all(np.abs(ratios - 1) <= HOLD_MATCH))
    return Measurement(
        "sync_holds_vcpus", 1.0 if held else 0.0, 1.0, len(runs), _names(runs),
        "1 if the guest's longest gap between its 1 ms ticks (guest_src.maxgap_us_during) "
        f"is the setup's length within {HOLD_MATCH:.0%} in every completed run with a "
        "dirtier and no auto-converge: its vCPU waited for the BQL that setup (and each "
        "sync) holds",
        f"gap / setup {ratios.min():.3f}-{ratios.max():.3f}")


def measure_page_costs(records: Sequence[RunRecord]) -> tuple[Measurement, Measurement]:
    """page_ns and zero_page_ns: the migration thread's time per page while the guest runs.

    From the first pass's polls a window apart (100 ms) that carried under 95 % of the
    rate limit's budget: the thread sent as fast as the host let it. page_ns is the
    median of (interval / normal pages) over those that sent no zero page; zero_page_ns
    is what the intervals with at least `MIN_ZERO_PAGES` zero pages took beyond their
    normal pages at page_ns, over their zero pages (a few thousand zero pages are lost in
    the normal pages' spread).
    """
    runs = [r for r in records if _unlimited_windows(r)]
    windows = [w for r in runs for w in _unlimited_windows(r)]
    pure = np.array([dt / n for dt, n, z in windows if z == 0 and n > 0])
    if not len(pure):
        raise ValueError("no window sent normal pages only below the rate limit")
    page_s = float(np.median(pure))
    mixed = [(dt, n, z) for dt, n, z in windows if z >= MIN_ZERO_PAGES]
    if not mixed:
        raise ValueError(f"no window sent {MIN_ZERO_PAGES} zero pages below the rate limit")
    extra = np.array([dt - page_s * n for dt, n, z in mixed])
    zeros = np.array([z for dt, n, z in mixed])
    zero_s = max(float(extra.sum() / zeros.sum()), 0.0)
    each = extra / zeros
    pure_runs = tuple(r.name for r in runs
                      if any(z == 0 and n > 0 for _, n, z in _unlimited_windows(r)))
    page = Measurement(
        "page_ns", page_s * 1e9, 0.1e3, len(pure), pure_runs,
        "median of poll interval / normal pages sent, first-pass intervals of 100 ms that "
        "sent no zero page and under 95 % of the rate limit's budget (not rate-limited)",
        f"{pure.min() * 1e6:.2f}-{pure.max() * 1e6:.2f} us a page")
    zero = Measurement(
        "zero_page_ns", zero_s * 1e9, 0.01e3, len(mixed),
        tuple(r.name for r in runs if any(z >= MIN_ZERO_PAGES
                                          for _, _, z in _unlimited_windows(r))),
        f"such intervals with {MIN_ZERO_PAGES:,} zero pages or more: the time beyond their "
        "normal pages at page_ns, summed, over their zero pages summed",
        f"{each.min() * 1e6:.2f}-{each.max() * 1e6:.2f} us a page per interval")
    return page, zero


def measure_stopped_page(records: Sequence[RunRecord]) -> tuple[Measurement, Fit]:
    """stopped_page_ns: the time per page of the completion, the guest stopped.

    The slope of QEMU's `downtime` against the pages it sent while stopped
    (`downtime-bytes` / 4 KiB), over the completed runs whose completion sent at
    least `MIN_COMPLETION_PAGES` pages; the fit's intercept is the completion's
    fixed part (vm_stop, the final sync, the device state), returned with it.
    """
    runs = [r for r in records if r.completed
            and r.result.ram["downtime-bytes"] / PAGE_SIZE >= MIN_COMPLETION_PAGES]
    pages = [r.result.ram["downtime-bytes"] / PAGE_SIZE for r in runs]
    fit = fit_line(pages, [r.result.downtime_ms for r in runs])
    return Measurement(
        "stopped_page_ns", fit.slope * 1e6, 0.05e3, fit.n, _names(runs),
        f"slope of result.downtime_ms against downtime-bytes / 4 KiB, completed runs that "
        f"sent {MIN_COMPLETION_PAGES:,} pages or more while stopped (the intercept is "
        f"stop_ns)", f"residual {fit.residual_sd:.1f} ms"), fit


def measure_stop(records: Sequence[RunRecord]) -> Measurement:
    """stop_ns: the completion's fixed part (vm_stop, the final sync with the guest
    stopped, the device state, the end): the intercept of `measure_stopped_page`'s line."""
    stopped, fit = measure_stopped_page(records)
    return Measurement(
        "stop_ns", max(fit.intercept, 0.0) * 1e6, 0.1e6, fit.n, stopped.runs,
        "intercept of result.downtime_ms against downtime-bytes / 4 KiB (stopped_page_ns's "
        "line): the downtime that does not depend on the pages sent",
        f"residual {fit.residual_sd:.1f} ms")


def sync_samples(record: RunRecord, page_ns: float) -> list[SyncSample]:
    """The syncs of a rate-limited run whose start and end the trace pins down.

    A sync ends at its MIGRATION_PASS event. It starts at a rate-limit window's start
    (`migration_rate_limit` closes the window, the next `migration_iteration_run`
    finds pending below threshold_size and syncs), which the polls do not show: the
    windows are rebuilt as QEMU opens them. The first opens when migration_thread
    starts, before the setup (`update_iteration_initial_status`), so it closes at the
    first loop pass after the setup (MIGRATION to `active`), once the first budget has
    gone at page_ns a page; each then closes 100 ms after it opened, except the one a
    sync runs in, which closes once the thread has sent its budget after the sync
    (at page_ns a page) if that is later. The sync starts at the first window start
    at or after the last poll before it (within `CLOCK_SLACK_S`). Kept: syncs whose
    next poll waited for them (answered within `LATE_POLL_S` of the event) and saw
    nothing sent since the poll before (`transferred` flat), while the guest ran (not
    the completion's). The chain stops at a sync it cannot place.
    """
    p = record.progress
    active = p.active()
    budget_pages = _budget(record) / (PAGE_SIZE + 8)  # a normal page and its 8-byte header
    send_s = budget_pages * page_ns / 1e9
    active_at = record.status_at("active")
    if active_at is None or not is_rate_limited(record):
        return []
    opened = active_at + send_s
    passes = record.passes()
    running = passes[1:-1] if record.completed else passes[1:]  # the last: the completion's
    samples = []
    for e in running:
        n, end = e.pass_no, e.t_qemu
        before = np.flatnonzero(active & (p.t < end - 1e-3) & (p["dirty-sync-count"] < n))
        late = np.flatnonzero(active & (np.abs(p.t - end) <= LATE_POLL_S)
                              & (p["dirty-sync-count"] == n))
        if not len(before) or not len(late):
            break
        b, a = before[-1], late[0]
        k = math.ceil((p.t[b] - CLOCK_SLACK_S - opened) / WINDOW_S - 1e-9)
        start = opened + max(k, 0) * WINDOW_S
        if p["transferred"][a] == p["transferred"][b] and start < end:
            samples.append(SyncSample(record.name, n, start, end,
                                      int((p["remaining"][a] - p["remaining"][b]) / PAGE_SIZE)))
        opened = max(end + send_s, start + WINDOW_S)
    return samples


def measure_sync(records: Sequence[RunRecord], page_ns: float
                 ) -> tuple[Measurement, Measurement, Fit, list[SyncSample]]:
    """sync_gib_ns and sync_page_ns: a sync's userspace time while the guest runs.

    A straight line through the `sync_samples` of every rate-limited run: the stall
    (from the window start it began at to its MIGRATION_PASS) against the pages it
    found newly dirty (the jump in `remaining`). The slope is the cost per dirty
    page: 7.2's per-page path of `cpu_physical_memory_sync_dirty_bitmap` clears
    each dirty page with `cpu_physical_memory_test_and_clear_dirty`, which under TCG
    resets that page in every vCPU's TLB (`tlb_reset_dirty_range_all`). The
    intercept is the part that does not depend on them; every run is 1 GiB
    (ram.total 1 GiB + 512 KiB), so a fixed part and a part per GiB cannot be told
    apart: it is charged per GiB (sync_gib_ns, sync_ns left 0) because that path
    visits every page of every RAMBlock, dirty or not. The engine charges the slope
    per page harvested, which also counts pages found again that were still pending
    (at most the few thousand pending at a sync: the jump is the floor of it).
    """
    runs = [r for r in records if sync_samples(r, page_ns)]
    samples = [s for r in runs for s in sync_samples(r, page_ns)]
    fit = fit_line([s.found_pages for s in samples], [s.stall_ms for s in samples])
    gib = np.median([r.ram_total_bytes for r in runs]) / GIB
    note = (f"{fit.n} syncs, {fit.x_range[0]:,.0f}-{fit.x_range[1]:,.0f} pages found; "
            f"residual {fit.residual_sd:.0f} ms")
    per_gib = Measurement(
        "sync_gib_ns", max(fit.intercept, 0.0) * 1e6 / gib, 1e6, fit.n, _names(runs),
        f"intercept of the stall against the pages found ({fit.intercept:.1f} ms) over "
        f"ram.total ({gib:.4f} GiB); every run is 1 GiB, so fixed and per-GiB cannot be told "
        "apart: per GiB, as 7.2's per-page path walks every page", note)
    per_page = Measurement(
        "sync_page_ns", fit.slope * 1e6, 0.05e3, fit.n, _names(runs),
        "slope of a sync's stall (its window start to its MIGRATION_PASS) against the "
        "pages it found newly dirty (the jump in remaining), rate-limited runs", note)
    return per_gib, per_page, fit, samples


def measure_costs(records: Sequence[RunRecord]) -> dict[str, Measurement]:
    """Every QemuCosts constant measured from *records*, by name (sync_ns: 0, see
    `measure_sync`). Raise `ValueError` if the records do not show one of them."""
    setup = measure_setup(records)
    page, zero = measure_page_costs(records)
    stopped, _ = measure_stopped_page(records)
    per_gib, per_page, _, _ = measure_sync(records, page.rounded_ns)
    fixed = Measurement("sync_ns", 0.0, 1e6, per_gib.samples, per_gib.runs,
                        "0: the stall's fixed part is charged per GiB (sync_gib_ns)")
    stop = measure_stop(records)
    holds = measure_holds(records)
    return {m.name: m for m in (setup, fixed, per_gib, per_page, page, zero, stopped, stop,
                                holds)}


def other_nonzero_pages(records: Sequence[RunRecord]) -> int:
    """Pages besides the dirtier's that hold data (kernel, initramfs, ROMs): what an idle
    run (`rate_pages_s` 0) sends as normal pages, less the dirtier's `dirty_mb`; the mean
    over the idle runs. Raise `ValueError` if there is none."""
    idle = [r for r in records if r.config.rate_pages_s == 0 and "normal" in r.result.ram]
    if not idle:
        raise ValueError("no idle run (rate_pages_s = 0) to count the guest's other pages")
    other = [r.result.ram["normal"] - r.config.dirty_mb * (1 << 20) / PAGE_SIZE for r in idle]
    return round(float(np.mean(other)))


# ------------------------------------------------------------------------ the table


def _format_ns(value: float) -> str:
    return f"{value:.1f}" if value != int(value) else f"{value:.0f}"


REFERENCE_TITLE = "QEMU 7.2.22 under TCG on the reference host: its own costs (migration.costs)"
REFERENCE_NOTES = (
    "The host: 2 cores, kernel 6.18, /dev/kvm from the software kvm_pvm hypervisor, so QEMU "
    "ran its guest under TCG (1 vCPU, 1 GiB less 8 KiB of RAM, which forces 7.2's per-page "
    "path of cpu_physical_memory_sync_dirty_bitmap; see configs/reference/qemu-7.2-tcg/).",
    "What the engine does with each: setup_ns once at setup; sync_ns + sync_gib_ns x GiB of "
    "ram.total + sync_page_ns x pages harvested at each sync while the guest runs (none at "
    "the completion's: the traces show it a few ms); max(link time, page_ns x normal + "
    "zero_page_ns x zero) per batch while the guest runs; stopped_page_ns x pages in "
    "the completion, and stop_ns once in it; with sync_holds_vcpus the guest's vCPUs wait "
    "out setup_ns and each sync's part (a paced guest then catches up, at most its "
    "max-lag).",
    "Not in this table, seen in the traces: pages sent again after the first pass go "
    "faster than page_ns (a rate-limited window of 400 MiB/s carries 10,221 pages, "
    "<= 9.8 us a page; the destination no longer faults its memory in).",
    "Regenerate: python -m migrate.validate.measure > configs/costs/qemu/qemu-7.2-tcg.toml",
)


def costs_toml(measurements: dict[str, Measurement], *, title: str, source: str,
               notes: Sequence[str] = ()) -> str:
    """The cost table's TOML: each constant rounded to its step, with how it was measured."""
    lines = [f"# {title}", "#"]
    for text in (f"Measured from {source} by migrate/validate/measure.py (each method is "
                 "its function's docstring there, in short beside each value); "
                 "tests/test_validate.py measures again from the shipped traces and "
                 "checks these values. Nanoseconds, each rounded to the step its comment "
                 "gives.", *notes):
        lines += [f"# {line}" for line in _wrap(text)] + ["#"]
    lines[-1] = ""
    for name in ("setup_ns", "sync_ns", "sync_gib_ns", "sync_page_ns", "page_ns",
                 "zero_page_ns", "stopped_page_ns", "stop_ns", "sync_holds_vcpus"):
        m = measurements[name]
        unit = "" if name == "sync_holds_vcpus" else " ns"  # a flag, 0 or 1
        text = (f"{m.method}. Measured {_format_ns(m.value_ns)}{unit} from {m.samples} "
                f"samples ({', '.join(m.runs)})" + (f"; {m.spread}" if m.spread else "")
                + (f"; rounded to {_format_ns(m.step_ns)} ns." if unit else "."))
        lines += [f"# {line}" for line in _wrap(text)]
        lines += [f"{name} = {_format_ns(m.rounded_ns)}", ""]
    return "\n".join(lines)


def _wrap(text: str, width: int = 86) -> list[str]:
    out, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            out.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return out + ([line] if line else [])


def main() -> None:
    """Print the reference host's table, measured from the shipped reference runs."""
    records = read_records([REFERENCE_RUNS])
    print(costs_toml(measure_costs(records), title=REFERENCE_TITLE,
                     source=str(REFERENCE_RUNS.relative_to(CONFIGS_DIR.parent)),
                     notes=REFERENCE_NOTES), end="")


if __name__ == "__main__":
    main()
