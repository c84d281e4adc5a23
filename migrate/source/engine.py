"""The source: QEMU's precopy migration thread, driving the guest model and a destination.

setup (dirty logging on, the setup sync) -> the loop of `migration_thread` as
the configured QEMU release runs it (`migration.qemu-version`): each pass
looks at what is pending, syncs the bitmap when it is below `threshold_size`,
completes when it fits, else sends until the window's rate budget is spent
or 50 ms have passed, then sleeps out the window -> completion (the guest
stopped, a last sync, the rest sent unthrottled) -> verify.

Before every batch the guest runs up to the clock's now, so every page is
read at the time it is sent. On any failure or cancel the guest resumes at
the source with its memory untouched (the source never writes guest memory).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from migrate import wire
from migrate.config import Scenario
from migrate.digest import memory_digests
from migrate.errors import ProtocolError
from migrate.report import GuestCost, GuestTotals, Report, RoundRecord, Sample, SetupRecord
from migrate.source import datapath
from migrate.source.bitmap import MigrationBitmap
from migrate.source.client import DestinationClient, DestinationError
from migrate.source.clock import NS_PER_S, make_clock
from migrate.source.counters import MigrationCounters
from migrate.source.datapath import PassTraffic
from migrate.source.link import Link
from migrate.source.policy import (
    DIRTY_SYNC_TIMESLICE_NS,
    PERIOD_NS,
    AutoConverge,
    Decision,
    can_complete,
    give_up,
    has_periodic_sync,
    should_sync,
)
from migrate.source.progress import EVERY_S, PassMeter, PassProgress
from vmmodel import PAGE_SIZE, GuestInterrupted, GuestStats, HarvestResult, Vm

log = logging.getLogger("precopy.source")
NS_PER_MS = 1e6
DEVICE_STATE_PER_VCPU = 4096  # registers, LAPIC, MSRs: a few KiB per vCPU in QEMU's stream


class MigrationCancelled(Exception):
    """Cancelled by the user or by the on-no-convergence policy; the guest stays here."""


MAX_WAIT_NS = 50_000_000  # ram_save_iterate: #define MAX_WAIT 50 (ms)
MAX_WAIT_EVERY_PAGES = 64  # ...checked every 64 pages (`(i & 63) == 0`)
POLL_NS = 100_000_000  # the samples: query-migrate every 100 ms, as the reference harness polls
# A PAGES body's bytes per page besides its payload (its gfn and its kind), from the layout.
PAGE_WIRE_OVERHEAD = wire.pages_layout(1).padding - wire.pages_layout(0).padding


@dataclass
class Interval:
    """The stretch between two bitmap syncs: one wire pass, one RoundRecord."""

    pass_no: int
    start_ns: float
    dirty_pages: int
    before: GuestStats
    sender: datapath.PassSender


class Source:
    """One migration of one guest to one destination."""

    def __init__(self, scenario: Scenario, client: DestinationClient, *,
                 progress: Callable[[RoundRecord], None] | None = None,
                 pass_progress: Callable[[PassProgress], None] | None = None,
                 pass_progress_every_s: float = EVERY_S,
                 should_stop: Callable[[], bool] | None = None) -> None:
        self.scenario = scenario
        self.client = client
        self.progress = progress
        m = scenario.migration
        self.version = m.qemu_version
        self.vm = Vm(scenario.guest, scenario.mmu, scenario.costs, scenario.seed)
        self.bitmap = MigrationBitmap(self.vm.npages)
        # Samples within an interval, between batches (`progress` has each once it ended).
        self.meter = None if pass_progress is None else PassMeter(
            pass_progress, dirty=lambda: self.bitmap.dirty_pages, every_s=pass_progress_every_s)
        if should_stop is not None:
            self.vm.should_stop = should_stop  # Ctrl-C reaches into a long guest stretch
        self.clock = make_clock(scenario.clock)
        self.link = Link(self.clock, scenario.link.bandwidth_bps)
        self.counters = MigrationCounters(m.downtime_limit_ns, m.max_bandwidth_bps,
                                          m.avail_switchover_bandwidth_bps)
        self.report = Report(seed=scenario.seed, clock=scenario.clock, config=scenario.to_dict(),
                             qemu_version=self.version)
        self.ram = self.report.ram
        self.ram.total = self.vm.npages * PAGE_SIZE
        self.migration_id: str | None = None
        self.status = "setup"
        self._lz4_raw_bytes = 0  # NORMAL-page bytes that lz4 shrank, before lz4
        self._verify_wall_ns = 0.0
        self._pages_sent = 0
        self._interval: Interval | None = None
        # migration_bitmap_sync's period: since the last check (more than a second ago).
        self._time_last_bitmap_sync = 0.0
        self._num_dirty_pages_period = 0
        self._bytes_xfer_prev = 0
        self._remaining_at_sync = 0  # ram_counters.remaining: dirty bytes after the last sync
        self._next_poll_ns = 0.0
        self._periodic_next_ns = float("inf")  # 9.2+: the auto-converge sync timer
        self._periodic_count_prev = 0
        self.auto_converge = AutoConverge(
            threshold_pct=m.throttle_trigger_threshold, initial_pct=m.cpu_throttle_initial,
            increment_pct=m.cpu_throttle_increment, maximum_pct=m.cpu_throttle_max,
            tailslow=m.cpu_throttle_tailslow,
        ) if m.auto_converge else None

    # ------------------------------------------------------------------ run

    async def run(self) -> Report:
        """Migrate; always return a report (failures and cancels included)."""
        wall_start = time.perf_counter()
        try:
            await self.setup()
            decision = await self.iterate()
            self.report.switchover = decision.value
            if decision is Decision.CANCEL:
                raise MigrationCancelled(
                    f"no convergence after {self.ram.dirty_sync_count - 1} syncs and "
                    f"{self._migration_ns() / NS_PER_S:.1f} s (on-no-convergence = cancel)")
            if decision is Decision.FORCE:
                self._check_forced_downtime()
                log.info("no convergence: forcing switchover")
            await self.complete()
        except (MigrationCancelled, GuestInterrupted, asyncio.CancelledError) as err:
            why = str(err) or "cancelled by the user"
            if isinstance(err, GuestInterrupted):
                why = f"cancelled by the user ({why})"
            await self._abort("cancelled", why)
        except (DestinationError, ProtocolError, OSError) as err:
            await self._abort("failed", str(err))
        except Exception as err:  # a bug of ours: still, the guest stays here, running
            log.debug("migration failed on an internal error", exc_info=True)
            await self._abort("failed", f"internal error: {err!r}")
        self.report.wall_time_s = time.perf_counter() - wall_start
        self.report.guest = self._guest_totals()
        self.report.complete_rounds = self.bitmap.complete_rounds
        return self.report

    def _check_forced_downtime(self) -> None:
        """Refuse a forced switchover whose stop-and-copy alone would outlast max-time (a
        link far too slow for the guest): the guest would stay paused for that long."""
        pending = self.bitmap.remaining_bytes(PAGE_SIZE)
        pause_ns = pending * NS_PER_S / self.link.bandwidth_bps
        if pause_ns > self.scenario.migration.max_time_ns:
            raise MigrationCancelled(
                f"no convergence by max-time, and a forced switchover would pause the guest "
                f"for ~{pause_ns / NS_PER_S:,.0f} s to send the {pending / (1 << 20):,.1f} MiB "
                f"still dirty, more than max-time")

    async def _abort(self, status: str, why: str) -> None:
        """Leave the guest running here, intact, and tell the destination to discard."""
        if self._interval is not None:
            self._interval.sender.close()
        self._resume_here()
        self.report.status = status
        self.report.error = why
        # QEMU's total-time of a migration that did not complete: until it ended.
        self.report.total_time_ms = self._migration_ns() / NS_PER_MS
        self.ram.remaining = self.bitmap.remaining_bytes(PAGE_SIZE)
        self.status = status
        self._sample(self.clock.now_ns, force=True)
        log.warning("migration %s: %s", status, why)
        if self.migration_id is not None:
            try:
                await asyncio.wait_for(self.client.cancel(self.migration_id), timeout=5)
            except (DestinationError, TimeoutError, asyncio.CancelledError):
                pass  # it may be gone already; it discards on its own then

    def _migration_ns(self) -> float:
        """The clock's now, less the emulator's own checking (digests, verification) when
        that took real time (wall clock): no migration figure includes it."""
        return self.clock.now_ns - self.clock.host_ns_seen(self._verify_wall_ns)

    def _resume_here(self) -> None:
        """The guest carries on at the source, unthrottled (QEMU's cpu_throttle_stop()
        when a migration ends without the destination resuming)."""
        self.vm.resume()
        self.vm.set_throttle(0.0)

    # ------------------------------------------------------------------ setup

    async def setup(self) -> None:
        """Touch the working set, say hello, enable dirty logging, the setup sync."""
        self.vm.prefill()
        before = GuestStats(**asdict(self.vm.stats))  # the setup's share starts here
        self.clock = make_clock(self.scenario.clock)  # time starts now
        self.link = Link(self.clock, self.scenario.link.bandwidth_bps)
        start = self.clock.now_ns
        self._sample(start)
        # migration_thread opens the first rate-limit window before the setup
        # (update_iteration_initial_status), so the first loop pass closes it at once.
        self.counters.start(start, self.ram.transferred, self._pages_sent)
        self.migration_id = await self.client.hello(self._hello())
        await self.clock.elapse(2 * self.scenario.link.latency_ns)
        enable = self.vm.enable_dirty_logging()  # the guest runs meanwhile, and faults
        await self.clock.elapse(enable.kernel_ns)
        # ram_init_bitmaps: every page dirty in the migration bitmap, then the setup sync
        # (counted: dirty-sync-count 1). QEMU's userspace part is the table's setup_ns.
        harvest, _ = self._harvest_into_bitmap()
        self._hold_vcpus(self.scenario.qemu_costs.setup_ns)
        await self.clock.elapse(harvest.kernel_ns + self.scenario.qemu_costs.setup_ns)
        self._time_last_bitmap_sync = self.clock.now_ns
        self._remaining_at_sync = self.bitmap.remaining_bytes(PAGE_SIZE)
        self.report.setup = SetupRecord(**self._guest_cost(before),
                                        harvest=_without_gfns(enable),
                                        sync=_without_gfns(harvest))
        self.report.setup_time_ms = (self.clock.now_ns - start) / NS_PER_MS
        self.status = "active"

    def _hello(self) -> dict:
        return {
            "page-size": PAGE_SIZE,
            "memory-pages": self.vm.npages,
            "slots": [{"id": s.id, "name": s.name, "base-gfn": s.base_gfn, "npages": s.npages}
                      for s in self.vm.slots],
            "vcpus": self.scenario.guest.vcpus,
        }

    # ------------------------------------------------------------------ the loop

    async def iterate(self) -> Decision:
        """migration_thread's loop until it completes or precopy's own policy gives up."""
        m = self.scenario.migration
        c = self.counters
        if self.auto_converge is not None and has_periodic_sync(self.version):
            self._periodic_next_ns = self.clock.now_ns + DIRTY_SYNC_TIMESLICE_NS
        self._begin_interval()
        while True:
            await self._periodic_sync()
            if not c.rate_limited():
                # migration_iteration_run
                pending = self.bitmap.remaining_bytes(PAGE_SIZE)
                if should_sync(pending, c.threshold_size):
                    await self.sync()
                    pending = self.bitmap.remaining_bytes(PAGE_SIZE)
                if can_complete(self.version, pending, c.threshold_size):
                    return Decision.SWITCHOVER
                decision = give_up(
                    syncs_after_setup=self.ram.dirty_sync_count - 1,
                    elapsed_ns=self._migration_ns(), max_iterations=m.max_iterations,
                    max_time_ns=m.max_time_ns, on_no_convergence=m.on_no_convergence)
                if decision is not Decision.CONTINUE:
                    return decision
                await self.ram_save_iterate()
            await self.rate_limit()

    async def rate_limit(self) -> None:
        """migration_rate_limit(): close the window if it is over; if its budget is spent,
        sleep out the window."""
        now = self.clock.now_ns
        self._update_counters(now)
        if self.counters.rate_limited():
            wait = self.counters.window_end_ns() - now
            if wait > 0:
                await self.clock.elapse(wait)
        self._sample(self.clock.now_ns)

    def _update_counters(self, now: float) -> None:
        self.counters.update(now, self.ram.transferred, self._pages_sent,
                             dirty_pages_rate=self.ram.dirty_pages_rate,
                             remaining_at_sync=self._remaining_at_sync)
        self.report.expected_downtime_ms = self.counters.expected_downtime_ms
        self.ram.mbps = self.counters.mbps
        self.ram.pages_per_second = self.counters.pages_per_second

    async def ram_save_iterate(self) -> None:
        """Send from the scan's position until the budget is spent, MAX_WAIT has passed,
        or no page is dirty."""
        c = self.counters
        started = self.clock.now_ns
        sent = 0  # pages in this call (QEMU's `i`)
        batch_pages = self.scenario.migration.batch_pages
        while not c.rate_limited():
            self._before_batch()
            gfns = self.bitmap.peek(batch_pages)
            if len(gfns) == 0:
                return  # done: nothing dirty (QEMU's `done = 1`)
            n, waited = self._pages_allowed(gfns, sent, self.clock.now_ns - started)
            await self._send(gfns[:n])
            sent += n
            if waited:
                return

    def _pages_allowed(self, gfns: np.ndarray, sent: int, elapsed_ns: float
                       ) -> tuple[int, bool]:
        """How many of `gfns` this call sends before the budget is exceeded (the page that
        exceeds it included) or MAX_WAIT has passed at a 64-page check; and whether it was
        MAX_WAIT that cut them."""
        normal = ~self.vm.memory.zero_mask(gfns)
        wire_bytes = np.cumsum(PAGE_WIRE_OVERHEAD + PAGE_SIZE * normal.astype(np.int64))
        n = len(gfns)
        over = np.flatnonzero(wire_bytes > self.counters.budget_left())
        if len(over):
            n = int(over[0]) + 1
        q = self.scenario.qemu_costs
        cpu_ns = np.cumsum(np.where(normal, q.page_ns, q.zero_page_ns))
        took_ns = elapsed_ns + np.maximum(wire_bytes * NS_PER_S / self.link.bandwidth_bps, cpu_ns)
        checks = np.flatnonzero(((sent + np.arange(n)) % MAX_WAIT_EVERY_PAGES == 0)
                                & (took_ns[:n] > MAX_WAIT_NS))
        if len(checks):
            return int(checks[0]) + 1, True
        return n, False

    async def _send(self, gfns: np.ndarray, *, guest_stopped: bool = False) -> None:
        """Send `gfns` (from the bitmap's `peek`): the meter samples, the bits clear, the
        batch goes."""
        interval = self._interval
        if self.meter is not None:
            self.meter.batch(self.clock.now_ns, len(gfns))
        self.bitmap.clear(gfns)
        frame = await interval.sender.send(gfns, guest_stopped=guest_stopped)
        self.counters.account(frame.nbytes)
        self._pages_sent += frame.n_pages
        self.ram.transferred += frame.nbytes
        if guest_stopped:
            self.ram.downtime_bytes += frame.nbytes
        else:
            self.ram.precopy_bytes += frame.nbytes
        self.ram.duplicate += frame.n_zero
        self.ram.normal += frame.n_normal
        self.ram.normal_bytes += frame.n_normal * PAGE_SIZE
        if frame.compressed:
            self.ram.compressed_bytes += frame.payload_wire_bytes
            self._lz4_raw_bytes += frame.payload_raw_bytes
        wire_bytes = self.ram.normal_bytes - self._lz4_raw_bytes + self.ram.compressed_bytes
        self.ram.compression_ratio = self.ram.normal_bytes / wire_bytes if wire_bytes else 1.0

    def _before_batch(self) -> None:
        """Run the guest up to now, so the batch is read as it is at the time it is sent;
        answer the polls that are due."""
        now = self.clock.now_ns
        self.vm.advance_to(now)
        self._sample(now)

    # ------------------------------------------------------------------ syncs

    async def sync(self) -> HarvestResult:
        """migration_bitmap_sync(): harvest every logging slot, OR it into the bitmap;
        the period's figures and auto-converge once a second; a new interval begins."""
        harvest, new = self._harvest_into_bitmap()
        q = self.scenario.qemu_costs
        qemu_ns = 0.0
        if not self.vm.paused:  # the userspace part: the reference host's TCG per-page path
            qemu_ns = (q.sync_ns + q.sync_gib_ns * self.ram.total / (1 << 30)
                       + q.sync_page_ns * len(harvest.gfns))
        await self.clock.elapse(harvest.kernel_ns)
        self._hold_vcpus(qemu_ns)
        await self.clock.elapse(qemu_ns)
        self._num_dirty_pages_period += new
        self._remaining_at_sync = self.bitmap.remaining_bytes(PAGE_SIZE)
        end = self.clock.now_ns
        if end > self._time_last_bitmap_sync + PERIOD_NS:
            self._trigger_throttle()
            self.ram.dirty_pages_rate = (self._num_dirty_pages_period * NS_PER_S
                                         / (end - self._time_last_bitmap_sync))
            self._time_last_bitmap_sync = end
            self._num_dirty_pages_period = 0
            self._bytes_xfer_prev = self.ram.transferred
        await self._end_interval(harvest)
        return harvest

    def _harvest_into_bitmap(self) -> tuple[HarvestResult, int]:
        """The part every sync shares (setup's, the loop's, the completion's): KVM's log
        harvested with the guest run up to now, ORed into the bitmap, counted in
        dirty-sync-count. Return the harvest and how many pages were newly dirty."""
        self.vm.advance_to(self.clock.now_ns)
        harvest = self.vm.sync_dirty_log()
        self.ram.dirty_sync_count += 1
        return harvest, self.bitmap.sync(harvest.gfns)

    def _hold_vcpus(self, qemu_ns: float) -> None:
        """QEMU's userspace part of a setup or sync: on a host whose vCPUs wait for it
        (the table's sync_holds_vcpus: TCG and the BQL) they run none of it."""
        if self.scenario.qemu_costs.sync_holds_vcpus and qemu_ns > 0:
            self.vm.advance_to(self.clock.now_ns)
            self.vm.hold_vcpus(qemu_ns)

    def _trigger_throttle(self) -> None:
        """migration_trigger_throttle(): auto-converge's check on the period."""
        if self.auto_converge is None or self.vm.paused:
            return
        pct = self.auto_converge.check(self.ram.transferred - self._bytes_xfer_prev,
                                       self._num_dirty_pages_period * PAGE_SIZE)
        if pct != round(self.vm.throttle * 100):
            self.vm.advance_to(self.clock.now_ns)
            self.vm.set_throttle(pct / 100)  # the vCPUs run (100 - pct) % of the time from now
        self.report.cpu_throttle_percentage = pct
        self.report.max_cpu_throttle_percentage = max(self.report.max_cpu_throttle_percentage,
                                                      pct)

    async def _periodic_sync(self) -> None:
        """QEMU 9.2+, auto-converge on: every 5 s, a sync if none came since the last tick
        (and not during the first pass)."""
        now = self.clock.now_ns
        if now < self._periodic_next_ns:
            return
        count = self.ram.dirty_sync_count
        if count > 1 and count == self._periodic_count_prev:
            await self.sync()
        self._periodic_count_prev = self.ram.dirty_sync_count
        self._periodic_next_ns = now + DIRTY_SYNC_TIMESLICE_NS

    # ------------------------------------------------------------------ intervals

    def _begin_interval(self) -> None:
        m = self.scenario.migration
        pass_no = self.ram.dirty_sync_count
        sender = datapath.PassSender(
            self.client, self.migration_id, pass_no, memory=self.vm.memory, link=self.link,
            channels=m.channels, compress=m.compression == "lz4", costs=self.scenario.costs,
            qemu=self.scenario.qemu_costs)
        self._interval = Interval(pass_no, self.clock.now_ns, self.bitmap.dirty_pages,
                                  GuestStats(**asdict(self.vm.stats)), sender)
        if self.meter is not None:
            phase = "stop-and-copy" if self.vm.paused else "precopy"
            self.meter.start(pass_no, phase, self.bitmap.dirty_pages, m.batch_pages,
                             self.clock.now_ns)

    async def _end_interval(self, harvest: HarvestResult) -> None:
        """The sync that just ran ends the interval: its pass ends on the wire, its record."""
        interval = self._interval
        traffic = await interval.sender.finish()
        now = self.clock.now_ns
        self._record(interval, "precopy", now, traffic, harvest,
                     traffic.bytes * NS_PER_S / max(now - interval.start_ns, 1.0),
                     self.counters.expected_downtime_ms * NS_PER_MS)
        self._begin_interval()

    # ------------------------------------------------------------------ completion

    async def complete(self) -> None:
        """migration_completion(): stop the guest, lift the rate limit, the last sync, send
        the rest and the device state, wait for RESUMED."""
        paused_at = self.clock.now_ns
        self.vm.advance_to(paused_at)
        self.vm.pause()
        self.status = "device"
        self.counters.max_bandwidth_bps = 0  # migration_rate_set(RATE_LIMIT_DISABLED)
        before = GuestStats(**asdict(self.vm.stats))
        # ram_save_complete: the last sync (counted), then every dirty page.
        interval = self._interval
        harvest, _ = self._harvest_into_bitmap()
        await self.clock.elapse(harvest.kernel_ns + self.scenario.qemu_costs.stop_ns)
        precopy = await interval.sender.finish()
        # The completion's sync ends this interval too, but it is the stop-and-copy's (the
        # pages it found go there): recorded once, so no sum over the rounds counts it twice.
        self._record(interval, "precopy", self.clock.now_ns, precopy, HarvestResult(),
                     precopy.bytes * NS_PER_S / max(self.clock.now_ns - interval.start_ns, 1.0),
                     self.counters.expected_downtime_ms * NS_PER_MS)
        self._begin_interval()
        final = self._interval
        final.start_ns, final.before = paused_at, before
        batch_pages = self.scenario.migration.batch_pages
        while len(gfns := self.bitmap.peek(batch_pages)):
            self._sample(self.clock.now_ns)
            await self._send(gfns, guest_stopped=True)
        traffic = await final.sender.finish()
        await self.clock.elapse(self.scenario.link.latency_ns)  # the last byte's flight
        device_state = self._device_state()
        # The device state is part of the round: its bytes and its time on the link both.
        sent_at = self.clock.now_ns
        await self.link.transfer(len(device_state) + wire.HEADER_SIZE)
        traffic.bytes += len(device_state) + wire.HEADER_SIZE
        traffic.send_ns += self.clock.now_ns - sent_at
        self.ram.transferred += len(device_state) + wire.HEADER_SIZE
        self.ram.downtime_bytes += len(device_state) + wire.HEADER_SIZE
        wall = time.perf_counter_ns()
        digests = memory_digests(self.vm.memory)  # the emulator's check, not migration work
        self._verify_wall_ns += time.perf_counter_ns() - wall
        answer = await self.client.complete(
            self.migration_id, final.pass_no, device_state, digests,
            {"pages": int(self.vm.npages)})
        await self.clock.elapse(2 * self.scenario.link.latency_ns)  # COMPLETE there, RESUMED back
        self._verify_wall_ns += float(answer.get("verify-ms", 0.0)) * NS_PER_MS
        ended = self._migration_ns()  # once: the wall clock moves on while we write it down
        downtime = ended - paused_at
        self.report.downtime_ms = downtime / NS_PER_MS
        self.report.total_time_ms = ended / NS_PER_MS
        self.report.verify_wall_ms = self._verify_wall_ns / NS_PER_MS
        self.ram.remaining = 0
        # migration_calculate_complete: the whole transfer's rate, setup left out.
        transfer_ms = self.report.total_time_ms - self.report.setup_time_ms
        if transfer_ms > 0:
            self.ram.mbps = self.ram.transferred * 8 / transfer_ms / 1e3
        self._record(final, "stop-and-copy", ended, traffic, harvest,
                     _bandwidth_bps(traffic), downtime)
        self._interval = None
        self._verdict(answer)
        self.status = self.report.status
        self._sample(ended, force=True)

    def _verdict(self, answer: dict) -> None:
        lost = answer.get("lost-gfns")
        verified = answer.get("verified") is True and lost == []
        self.report.verified = verified
        self.report.lost_pages = [int(g) for g in lost] if isinstance(lost, list) else []
        count = answer.get("lost-count")
        self.report.lost_count = count if isinstance(count, int) else len(self.report.lost_pages)
        if verified:
            self.report.status = "completed"
            return
        self._resume_here()  # the destination did not resume
        self.report.status = "failed"
        self.report.error = (f"verification failed: {self.report.lost_count} pages at the "
                             "destination differ from the source (lost writes)")

    def _device_state(self) -> bytes:
        rng = np.random.default_rng(self.scenario.seed)
        return rng.bytes(DEVICE_STATE_PER_VCPU * self.scenario.guest.vcpus)

    # ------------------------------------------------------------------ records

    def _sample(self, now: float, *, force: bool = False) -> None:
        """Answer the query-migrate polls due by `now` (one answer for polls that waited)."""
        if now < self._next_poll_ns and not force:
            return
        self._next_poll_ns = (now // POLL_NS + 1) * POLL_NS
        self.report.samples.append(Sample(
            t=now / NS_PER_S, status=self.status, transferred=self.ram.transferred,
            remaining=self.bitmap.remaining_bytes(PAGE_SIZE) if self.status != "completed" else 0,
            dirty_sync_count=self.ram.dirty_sync_count, mbps=self.counters.mbps,
            dirty_pages_rate=self.ram.dirty_pages_rate,
            expected_downtime=self.counters.expected_downtime_ms,
            cpu_throttle_percentage=round(self.vm.throttle * 100)))

    def _record(self, interval: Interval, phase: str, end: float, traffic: PassTraffic,
                harvest: HarvestResult, bandwidth: float, expected_ns: float) -> None:
        record = RoundRecord(
            pass_no=interval.pass_no,
            phase=phase,
            start_ms=interval.start_ns / NS_PER_MS,
            duration_ms=(end - interval.start_ns) / NS_PER_MS,
            dirty_pages=interval.dirty_pages,
            pages_sent=traffic.pages,
            bytes=traffic.bytes,
            bandwidth=bandwidth,
            threshold_size=self.counters.threshold_size,
            expected_downtime_ms=expected_ns / NS_PER_MS,
            **self._guest_cost(interval.before),
            cpu_throttle_percentage=round(self.vm.throttle * 100),
            harvest=_without_gfns(harvest),
        )
        self.report.rounds.append(record)
        if self.progress is not None:
            self.progress(record)

    def _guest_cost(self, before: GuestStats) -> dict[str, float]:
        """A GuestCost's fields: what the guest paid since `before` (GuestStats' names)."""
        return {f.name: getattr(self.vm.stats, f.name) - getattr(before, f.name)
                for f in fields(GuestCost)}

    def _guest_totals(self) -> GuestTotals:
        return GuestTotals(**asdict(self.vm.stats), n_used_mmu_pages=self.vm.n_used_mmu_pages,
                           running=not self.vm.paused)


def _bandwidth_bps(traffic: PassTraffic) -> float:
    """Bytes per second while the pass was on the wire (QEMU's bandwidth: sent / time)."""
    return traffic.bytes * NS_PER_S / traffic.send_ns if traffic.send_ns else 0.0


def _without_gfns(harvest: HarvestResult) -> HarvestResult:
    """The harvest's record for the report: its figures, not its (possibly huge) gfn array."""
    return replace(harvest, gfns=_NO_GFNS, slots=tuple(_without_gfns(h) for h in harvest.slots))


_NO_GFNS = np.empty(0, dtype=np.int64)


async def migrate(scenario: Scenario, dest_url: str, *, token: str | None = None,
                  timeout_s: float = 30.0,
                  progress: Callable[[RoundRecord], None] | None = None,
                  pass_progress: Callable[[PassProgress], None] | None = None,
                  should_stop: Callable[[], bool] | None = None) -> Report:
    """Run one migration of `scenario` to the destination at `dest_url`.

    `progress` is called with each pass's record as the pass ends, `pass_progress`
    with samples of the pass in flight (see `migrate.source.progress`).
    `should_stop` is asked between the guest's steps (slices or event-driven chunks);
    once it says yes the migration is cancelled, even in the middle of a long
    synchronous stretch of the model.
    """
    async with DestinationClient(dest_url, token=token, timeout_s=timeout_s) as client:
        source = Source(scenario, client, progress=progress, pass_progress=pass_progress,
                        should_stop=should_stop)
        return await source.run()
