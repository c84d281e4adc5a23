"""The source: QEMU's iterative precopy, driving the guest model and a destination.

setup -> iterate (send a pass, sync, decide) -> stop-and-copy -> verify.
Between batches the guest runs up to the clock's now, so every page is read
at the time it is sent. On any failure or cancel the guest resumes at the
source with its memory untouched (the source never writes guest memory).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, fields, replace

import numpy as np

from migrate import wire
from migrate.config import Scenario
from migrate.digest import memory_digests
from migrate.errors import ProtocolError
from migrate.report import GuestCost, GuestTotals, Report, RoundRecord, SetupRecord
from migrate.source import datapath
from migrate.source.client import DestinationClient, DestinationError
from migrate.source.clock import NS_PER_S, make_clock
from migrate.source.datapath import PassTraffic
from migrate.source.link import Link
from migrate.source.policy import AutoConverge, Decision, PassFigures, decide
from migrate.source.progress import EVERY_S, PassMeter, PassProgress
from vmmodel import PAGE_SIZE, GuestInterrupted, GuestStats, HarvestResult, Vm

log = logging.getLogger("precopy.source")
NS_PER_MS = 1e6
DEVICE_STATE_PER_VCPU = 4096  # registers, LAPIC, MSRs: a few KiB per vCPU in QEMU's stream


class MigrationCancelled(Exception):
    """Cancelled by the user or by the on-no-convergence policy; the guest stays here."""


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
        self.vm = Vm(scenario.guest, scenario.mmu, scenario.costs, scenario.seed)
        # Samples within a pass, between batches (`progress` has each pass once it ended).
        self.meter = None if pass_progress is None else PassMeter(
            pass_progress, dirty=self.vm.dirty_pages_pending, every_s=pass_progress_every_s)
        if should_stop is not None:
            self.vm.should_stop = should_stop  # Ctrl-C reaches into a long guest stretch
        self.bandwidth_bps = min(scenario.link.bandwidth_bps, scenario.migration.max_bandwidth_bps)
        self.clock = make_clock(scenario.clock)
        self.link = Link(self.clock, self.bandwidth_bps)
        self.report = Report(seed=scenario.seed, clock=scenario.clock, config=scenario.to_dict())
        self.ram = self.report.ram
        self.ram.total = self.vm.npages * PAGE_SIZE
        self.migration_id: str | None = None
        self._lz4_raw_bytes = 0  # NORMAL-page bytes that lz4 shrank, before lz4
        self._last_sync_ns = 0.0
        self._verify_wall_ns = 0.0
        m = scenario.migration
        self.auto_converge = AutoConverge(
            threshold_pct=m.throttle_trigger_threshold, initial_pct=m.cpu_throttle_initial,
            increment_pct=m.cpu_throttle_increment, maximum_pct=m.cpu_throttle_max,
        ) if m.auto_converge else None

    # ------------------------------------------------------------------ run

    async def run(self) -> Report:
        """Migrate; always return a report (failures and cancels included)."""
        wall_start = time.perf_counter()
        try:
            pending = await self.setup()
            pass_no = 1
            while True:
                pending, figures = await self.iterate(pass_no, pending)
                decision = decide(figures, **self._policy())
                self.report.switchover = decision.value
                if decision is Decision.CANCEL:
                    raise MigrationCancelled(
                        f"no convergence after {pass_no} passes (on-no-convergence = cancel)"
                    )
                if decision is not Decision.CONTINUE:
                    if decision is Decision.FORCE:
                        log.info("no convergence after %d passes: forcing switchover", pass_no)
                    break
                pass_no += 1
            await self.stop_and_copy(pass_no + 1, pending)
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
        return self.report

    def _policy(self) -> dict:
        m = self.scenario.migration
        return {"downtime_limit_ns": m.downtime_limit_ns, "max_iterations": m.max_iterations,
                "max_time_ns": m.max_time_ns, "on_no_convergence": m.on_no_convergence}

    async def _abort(self, status: str, why: str) -> None:
        """Leave the guest running here, intact, and tell the destination to discard."""
        self._resume_here()
        self.report.status = status
        self.report.error = why
        # QEMU's total-time of a migration that did not complete: until it ended.
        self.report.total_time_ms = self._migration_ns() / NS_PER_MS
        self.ram.remaining = self.vm.dirty_pages_pending() * PAGE_SIZE
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

    # ------------------------------------------------------------------ steps

    async def setup(self) -> np.ndarray:
        """Touch the working set, say hello, enable dirty logging; return the first pass's gfns."""
        self.vm.prefill()
        before = GuestStats(**asdict(self.vm.stats))  # the setup's share starts here
        self.clock = make_clock(self.scenario.clock)  # time starts now
        self.link = Link(self.clock, self.bandwidth_bps)
        start = self.clock.now_ns
        self.migration_id = await self.client.hello(self._hello())
        await self.clock.elapse(2 * self.scenario.link.latency_ns)
        enable = self.vm.enable_dirty_logging()  # the guest runs meanwhile, and faults
        await self.clock.elapse(enable.kernel_ns)
        self.report.setup = SetupRecord(**self._guest_cost(before),
                                        harvest=_without_gfns(enable))
        self.ram.dirty_sync_count = 1  # QEMU counts the setup sync
        self._last_sync_ns = self.clock.now_ns
        self.report.setup_time_ms = (self.clock.now_ns - start) / NS_PER_MS
        return np.arange(self.vm.npages, dtype=np.int64)  # the first pass: every page

    def _hello(self) -> dict:
        return {
            "page-size": PAGE_SIZE,
            "memory-pages": self.vm.npages,
            "slots": [{"id": s.id, "name": s.name, "base-gfn": s.base_gfn, "npages": s.npages}
                      for s in self.vm.slots],
            "vcpus": self.scenario.guest.vcpus,
        }

    async def iterate(self, pass_no: int, pending: np.ndarray) -> tuple[np.ndarray, PassFigures]:
        """Send one pass, then sync; return the next pass's gfns and the figures to decide on."""
        start = self.clock.now_ns
        before = GuestStats(**asdict(self.vm.stats))
        traffic = await self.send_pages(pass_no, pending)
        self.ram.precopy_bytes += traffic.bytes
        harvest = await self.sync()
        now = self.clock.now_ns
        # QEMU's dirty-pages-rate: distinct pages dirtied between two syncs, per second.
        self.ram.dirty_pages_rate = len(harvest.gfns) * NS_PER_S / max(now - self._last_sync_ns, 1)
        self._last_sync_ns = now
        bandwidth = _bandwidth_bps(traffic)
        remaining = len(harvest.gfns) * PAGE_SIZE
        expected = remaining * NS_PER_S / bandwidth if bandwidth else float("inf")
        self.report.expected_downtime_ms = expected / NS_PER_MS
        self.ram.mbps = bandwidth * 8 / 1e6
        self.ram.pages_per_second = traffic.pages * NS_PER_S / max(now - start, 1.0)
        self.ram.remaining = remaining
        self._record(pass_no, "precopy", start, now, pending, traffic, harvest, before,
                     bandwidth, expected)
        if self.auto_converge is not None:
            pct = self.auto_converge.after_sync(now, traffic.bytes, remaining)
            self.vm.set_throttle(pct / 100)  # the vCPUs run (100 - pct) % of the time from now
            self.report.cpu_throttle_percentage = pct
        figures = PassFigures(pass_no, remaining, bandwidth, now)
        return harvest.gfns, figures

    async def sync(self) -> HarvestResult:
        """Migration bitmap sync: harvest every logging slot through the strategy."""
        self.vm.advance_to(self.clock.now_ns)
        harvest = self.vm.sync_dirty_log()
        await self.clock.elapse(harvest.kernel_ns)
        self.ram.dirty_sync_count += 1
        return harvest

    async def stop_and_copy(self, pass_no: int, pending: np.ndarray) -> None:
        """Pause, final sync, send the rest and the device state, wait for RESUMED."""
        paused_at = self.clock.now_ns
        before = GuestStats(**asdict(self.vm.stats))
        self.vm.advance_to(paused_at)
        self.vm.pause()
        # QEMU lifts max-bandwidth for the completion (migration_completion_precopy:
        # migration_rate_set(RATE_LIMIT_DISABLED)): the rest goes at the link's speed.
        self.link.set_bandwidth(self.scenario.link.bandwidth_bps)
        harvest = await self.sync()
        rest = np.union1d(pending, harvest.gfns)
        traffic = await self.send_pages(pass_no, rest)
        device_state = self._device_state()
        # The device state is part of the round: its bytes and its time on the link both.
        sent_at = self.clock.now_ns
        await self.link.transfer(len(device_state) + wire.HEADER_SIZE)
        traffic.bytes += len(device_state) + wire.HEADER_SIZE
        traffic.send_ns += self.clock.now_ns - sent_at
        self.ram.downtime_bytes = traffic.bytes
        wall = time.perf_counter_ns()
        digests = memory_digests(self.vm.memory)  # the emulator's check, not migration work
        self._verify_wall_ns += time.perf_counter_ns() - wall
        answer = await self.client.complete(
            self.migration_id, pass_no, device_state, digests, {"pages": int(self.vm.npages)}
        )
        await self.clock.elapse(2 * self.scenario.link.latency_ns)  # COMPLETE there, RESUMED back
        self._verify_wall_ns += float(answer.get("verify-ms", 0.0)) * NS_PER_MS
        ended = self._migration_ns()  # once: the wall clock moves on while we write it down
        downtime = ended - paused_at
        self.report.downtime_ms = downtime / NS_PER_MS
        self.report.total_time_ms = ended / NS_PER_MS
        self.report.verify_wall_ms = self._verify_wall_ns / NS_PER_MS
        self.ram.remaining = 0
        bandwidth = _bandwidth_bps(traffic)
        self._record(pass_no, "stop-and-copy", paused_at, ended, rest, traffic, harvest, before,
                     bandwidth, downtime)
        self._verdict(answer)

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

    # ------------------------------------------------------------------ data path

    async def send_pages(self, pass_no: int, gfns: np.ndarray) -> PassTraffic:
        """Send `gfns` over the page channels, each batch read from guest memory as it goes out."""
        m = self.scenario.migration
        if self.meter is not None:
            phase = "stop-and-copy" if self.vm.paused else "precopy"
            self.meter.start(pass_no, phase, len(gfns), m.batch_pages, self.clock.now_ns)
        traffic = await datapath.send_pass(
            self.client, self.migration_id, pass_no, gfns, memory=self.vm.memory,
            link=self.link, batch_pages=m.batch_pages, channels=m.channels,
            compress=m.compression == "lz4", costs=self.scenario.costs,
            before_read=self._before_batch,
        )
        await self.clock.elapse(self.scenario.link.latency_ns)  # the last byte's flight
        self.ram.transferred += traffic.bytes
        self.ram.duplicate += traffic.zero
        self.ram.normal += traffic.normal
        self.ram.normal_bytes += traffic.normal * PAGE_SIZE
        self.ram.compressed_bytes += traffic.compressed_bytes
        self._lz4_raw_bytes += traffic.compressed_raw_bytes
        wire_bytes = self.ram.normal_bytes - self._lz4_raw_bytes + self.ram.compressed_bytes
        self.ram.compression_ratio = self.ram.normal_bytes / wire_bytes if wire_bytes else 1.0
        return traffic

    def _before_batch(self) -> None:
        """Run the guest up to now, so the batch is read as it is at the time it is sent;
        then the meter, if any, may sample the pass.

        Raise `MigrationCancelled` if a precopy pass alone outlasts twice max-time (a link
        far too slow for the guest): the policy only looks between passes.
        """
        now = self.clock.now_ns
        if not self.vm.paused and now > 2 * self.scenario.migration.max_time_ns:
            raise MigrationCancelled(
                f"a precopy pass was still sending after {now / NS_PER_S:.0f} s, twice max-time"
            )
        self.vm.advance_to(now)
        if self.meter is not None:
            self.meter.batch(now)

    def _device_state(self) -> bytes:
        rng = np.random.default_rng(self.scenario.seed)
        return rng.bytes(DEVICE_STATE_PER_VCPU * self.scenario.guest.vcpus)

    # ------------------------------------------------------------------ records

    def _record(self, pass_no: int, phase: str, start: float, end: float, pending: np.ndarray,
                traffic: PassTraffic, harvest: HarvestResult, before: GuestStats,
                bandwidth: float, expected_ns: float) -> None:
        record = RoundRecord(
            pass_no=pass_no,
            phase=phase,
            start_ms=start / NS_PER_MS,
            duration_ms=(end - start) / NS_PER_MS,
            dirty_pages=len(pending),
            pages_sent=traffic.pages,
            bytes=traffic.bytes,
            bandwidth=bandwidth,
            expected_downtime_ms=expected_ns / NS_PER_MS,
            **self._guest_cost(before),
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
