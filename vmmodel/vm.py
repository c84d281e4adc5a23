"""A guest running on the KVM MMU model: the object the migration drives.

`advance(dt)` runs the vCPUs for dt of guest time: the workload yields the
gfns written (numpy), each write goes through the vCPU's TLB and its spte,
write-protected sptes fault (`mark_page_dirty`), faults cost the vCPU time
and wait on mmu_lock when a harvest holds it. With PML (`mmu.pml`) nothing
faults: a TLB miss on an spte whose D bit is clear sets it and logs the gfn
in the vCPU's PML buffer, whose PML-full exits cost the vCPU time instead.
`harvest(slot, strategy)` runs one dirty-log harvest while the guest keeps
running. Everything is deterministic for a given seed.

Between two events that change the MMU (a harvest step, a flush, a zap, a
throttle, a phase change: every one of them is a call into the Vm, or a
workload's `next_change_ns`) the dirty set does not depend on how the stretch
is cut, so the guest generates a whole stretch at once, in chunks of at most
`CHUNK_WRITES` writes (`guest.advance = "events"`, the default). Fixed slices
of `guest.slice` (`"slices"`) stay as the reference it is checked against.

Auto-converge's throttle runs the vCPUs on QEMU's schedule (`ThrottleSchedule`):
each period they sleep, then run 10 ms. A chunk never runs into a sleep, and a
sleep is one chunk; what a vCPU runs of any stretch is a closed form.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from vmmodel.content import text_pool
from vmmodel.costs import CostTable
from vmmodel.harvest import STRATEGIES, HarvestResult, KernelWork
from vmmodel.layout import shadow_layout, tdp_layout
from vmmodel.lock import MmuLock
from vmmodel.memory import KVM_MEM_LOG_DIRTY_PAGES, MemSlot, make_memory
from vmmodel.mmu import Mmu, unique_ids
from vmmodel.pml import PmlLog
from vmmodel.spec import NS_PER_S, GuestSpec, MmuSpec, SpecError
from vmmodel.tlb import Tlbs
from vmmodel.workloads import MIN_SLICE_WRITE_CEILING, make_workload

# KVM's default shadow page budget: 20 per 1000 guest pages, at least 64
# (KVM_PERMILLE_MMU_PAGES, KVM_MIN_ALLOC_MMU_PAGES in arch/x86/kvm/mmu/mmu.c).
KVM_PERMILLE_MMU_PAGES = 20
KVM_MIN_ALLOC_MMU_PAGES = 64
# The most slices one `advance` runs: a longer stretch runs in longer slices, so one
# synchronous call does bounded work (a slice's writes are bounded too, by
# workloads.MAX_WRITES_PER_PAGE_PER_SLICE) and the engine's event loop, with its signal
# handlers, gets control back soon after a huge elapse. 1024 slices are about a second of
# guest time at the default 1 ms slice; the engine advances batch by batch, within 100 ms
# rate-limit windows, so a shipped scenario never reaches it.
MAX_SLICES_PER_ADVANCE = 1024
# The most writes one chunk of an event-driven stretch generates (8 MB of gfns): the memory
# bound of a stretch, and never past a slice's write ceiling, so no write is dropped.
CHUNK_WRITES = MIN_SLICE_WRITE_CEILING
# A chunk grows past `guest.slice` only while no vCPU loses more than this share of it to
# faults and lock waits: that time is repaid in the next chunk, not within the same one, so
# a long chunk of a busy guest would write as if its faults were free. A step-size bound of
# the method, not a model constant, measured: at 0.1 the event-driven guest agrees with the
# sliced one within 0.5 % (tests/test_guest_advance.py); at 0.3 a guest busy with faults
# writes during a short harvest at the wrong share of its rate (tests/test_harvest.py
# fails), as it does at 100.
MAX_CHUNK_LOAD = 0.1
# QEMU's throttle period, run time per period: at each tick of the throttle timer every vCPU
# sleeps 10 ms x p / (1 - p), and the timer fires again 10 ms / (1 - p) later, so a vCPU runs
# 10 ms per period (CPU_THROTTLE_TIMESLICE_NS, softmmu/cpu-throttle.c in QEMU 7.2,
# migration/cpu-throttle.c in 9.2 and 10.2: cpu_throttle_timer_tick, cpu_throttle_thread).
CPU_THROTTLE_TIMESLICE_NS = 10_000_000


@dataclass(frozen=True)
class ThrottleSchedule:
    """When QEMU's throttle lets the vCPUs run: from each tick of its timer, every vCPU
    sleeps `sleep_ns`, then runs until the next tick, `period_ns` after it (10 ms).

    The ticks are `start_ns + k * period_ns` (k >= 0) at `share`, the throttle percentage
    over 100. `cpu_throttle_set` ticks at once only when it turns the throttle on; a new
    percentage while throttling arms no timer, so the period in progress runs out as its
    tick set it: that is `head`, (its tick, its wake, its end == `start_ns`), and the new
    share starts at the next tick. Every figure over a stretch is a closed form, however
    many periods it spans. Share 0 is unthrottled (no tick, no sleep).
    """

    share: float = 0.0
    start_ns: float = 0.0
    head: tuple[float, float, float] | None = None

    # In QEMU's whole nanoseconds: the timer is re-armed at `now + TIMESLICE / (1 - pct)`
    # (an int64_t), and a vCPU sleeps `(int64_t)(pct / (1 - pct) * TIMESLICE + 1)` ("Add 1ns
    # to fix double's rounding error"), so it runs 1 ns short of 10 ms per period.

    @property
    def period_ns(self) -> float:
        return float(int(CPU_THROTTLE_TIMESLICE_NS / (1.0 - self.share)))

    @property
    def sleep_ns(self) -> float:
        return float(int(self.share / (1.0 - self.share) * CPU_THROTTLE_TIMESLICE_NS + 1))

    @property
    def throttling(self) -> bool:
        return self.share > 0.0

    def changed(self, share: float, now_ns: float) -> ThrottleSchedule:
        """The schedule after `cpu_throttle_set(share)` at `now_ns` (0: `cpu_throttle_stop`,
        which the model takes to wake the vCPUs at once)."""
        if share == self.share:
            return self
        if share == 0.0:
            return ThrottleSchedule()
        if not self.throttling:
            return ThrottleSchedule(share, now_ns)  # the timer ticks at once: sleep first
        if now_ns < self.start_ns:  # still in the head: the next tick reads the new share
            return replace(self, share=share)
        period = self.period_ns
        tick = self.start_ns + math.floor((now_ns - self.start_ns) / period) * period
        end = tick + period
        return ThrottleSchedule(share, end, (tick, tick + self.sleep_ns, end))

    def running_ns(self, t_ns: float, end_ns: float) -> float:
        """How long each vCPU runs in [t_ns, end_ns)."""
        if not self.throttling:
            return end_ns - t_ns
        # Within one sleep or one run, exactly (a sleeping slice writes nothing at all).
        wake = self.asleep_until(t_ns)
        if wake is not None:
            if end_ns <= wake:
                return 0.0
        elif (asleep := self.running_until(t_ns)) is None or end_ns <= asleep:
            return end_ns - t_ns
        total = 0.0
        lo = t_ns
        if lo < self.start_ns:
            until = min(end_ns, self.start_ns)
            wake = self.head[1] if self.head is not None else lo  # no head: unthrottled
            total += max(0.0, until - max(lo, wake))
            lo = until
        if end_ns > lo:
            total += self._run_since_start(end_ns) - self._run_since_start(lo)
        return total

    def _run_since_start(self, t_ns: float) -> float:
        """Run time of a vCPU in [start_ns, t_ns): whole periods, then the part of the
        last one past its sleep."""
        period, sleep = self.period_ns, self.sleep_ns
        since = t_ns - self.start_ns
        whole = math.floor(since / period)
        into = since - whole * period
        return whole * (period - sleep) + min(max(into - sleep, 0.0), period - sleep)

    def wakes(self, t_ns: float, end_ns: float) -> list[tuple[float, float, int]]:
        """The ends of sleeps in [t_ns, end_ns): (the last one's time, the sleep's length,
        how many), one entry per share (the head's wake, then the current share's)."""
        if not self.throttling:
            return []
        found = []
        if self.head is not None and t_ns <= self.head[1] < end_ns:
            found.append((self.head[1], self.head[1] - self.head[0], 1))
        before = self._wakes_before(end_ns)
        count = before - self._wakes_before(t_ns)
        if count > 0:
            found.append((self._wake(before - 1), self.sleep_ns, count))
        return found

    def asleep_until(self, t_ns: float) -> float | None:
        """The end of the sleep the vCPUs are in at `t_ns`, or None if they may run."""
        if not self.throttling:
            return None
        if self.head is not None and self.head[0] <= t_ns < self.head[1]:
            return self.head[1]
        if t_ns < self.start_ns:
            return None
        wake = self._wake(self._wakes_before(t_ns))  # the first at or after t_ns
        return wake if wake - self.sleep_ns <= t_ns < wake else None

    def running_until(self, t_ns: float) -> float | None:
        """When the vCPUs, running at `t_ns`, next fall asleep (the next tick), or None if
        never (unthrottled) or if they sleep at `t_ns`."""
        if not self.throttling or self.asleep_until(t_ns) is not None:
            return None
        if t_ns < self.start_ns:  # past the head's wake (or before any tick)
            return self.start_ns
        k = self._wakes_before(t_ns)
        if self._wake(k) <= t_ns:  # woken just now: this period's run
            k += 1
        return self._wake(k) - self.sleep_ns  # that sleep's tick, as asleep_until rounds it

    def _wake(self, k: int) -> float:
        """When the current share's sleep k (from 0) ends."""
        return self.start_ns + self.sleep_ns + k * self.period_ns

    def _wakes_before(self, t_ns: float) -> int:
        """How many of the current share's sleeps end before `t_ns`: the k with
        `_wake(k) < t_ns`, exactly as `_wake` rounds, so that two stretches that share a
        boundary count each wake once."""
        since = t_ns - self.start_ns - self.sleep_ns
        k = max(0, math.ceil(since / self.period_ns))
        while k > 0 and self._wake(k - 1) >= t_ns:
            k -= 1
        while self._wake(k) < t_ns:
            k += 1
        return k


class GuestInterrupted(Exception):
    """The caller's `should_stop` said stop: raised between two steps, so the model is whole."""


def _never() -> bool:
    return False


@dataclass
class GuestStats:
    """What the guest paid for dirty tracking since the last reset."""

    writes: int = 0
    write_faults: int = 0  # writes to write-protected sptes
    page_faults: int = 0  # writes that had to instantiate an spte
    # vCPU time spent in those faults, and waiting for mmu_lock (reported in whole ns)
    fault_ns: float = field(default=0.0, metadata={"whole": True})
    vcpu_stall_ns: float = field(default=0.0, metadata={"whole": True})
    zapped_pages: int = 0  # shadow pages zapped to stay under max_mmu_pages
    zap_flushes: int = 0
    # PML (mmu.pml): writes the CPU logged (an spte's D bit going 0 -> 1, the writes that
    # would have faulted without it), the PML-full exits they cost, and the vCPU time of
    # those exits, the kicks' exits and KVM's flushes of the buffers (reported in whole ns)
    pml_logged: int = 0
    pml_full_exits: int = 0
    pml_ns: float = field(default=0.0, metadata={"whole": True})

    @property
    def faults(self) -> int:
        return self.write_faults + self.page_faults


class Vm:
    """The guest, its memslots, its MMU and vCPUs."""

    def __init__(self, guest: GuestSpec, mmu: MmuSpec, costs: CostTable, seed: int) -> None:
        self.guest, self.mmu_spec, self.costs, self.seed = guest, mmu, costs, seed
        if mmu.strategy not in STRATEGIES:
            raise SpecError(f"mmu.strategy: {mmu.strategy!r} is not one of {', '.join(STRATEGIES)}")
        strategy = STRATEGIES[mmu.strategy]
        if strategy.needs_pml and not mmu.pml:
            raise SpecError(f"mmu.strategy: {mmu.strategy!r} needs mmu.pml = true")
        self.rng = np.random.default_rng(seed)
        ram = MemSlot(0, "ram", 0, guest.memory_pages)
        self.slots = [ram]
        vga = None
        if guest.vga_pages:
            vga = MemSlot(1, "vga", ram.end_gfn, guest.vga_pages)
            self.slots.append(vga)
        total = self.slots[-1].end_gfn
        self.memory = make_memory(guest.memory_backing, total)
        gfn_slot = np.zeros(total, dtype=np.uint8)
        for slot in self.slots:
            gfn_slot[slot.base_gfn : slot.end_gfn] = slot.id
        if mmu.shape == "tdp":
            layout = tdp_layout(total)
        else:
            layout = shadow_layout(total, guest.memory_pages, mmu, self.rng)
        budget = mmu.max_mmu_pages or max(
            KVM_MIN_ALLOC_MMU_PAGES, total * KVM_PERMILLE_MMU_PAGES // 1000
        )
        self.mmu = Mmu(layout, gfn_slot, budget)
        self.tlbs = Tlbs(guest.vcpus, layout.n_sptes, mmu.tlb_entries)
        # The vCPUs' PML buffers (None without PML): the harvest's Kvm.pml.
        self.pml = (PmlLog(guest.vcpus, costs, self._mark_page_dirty,
                           flush_on_exit=strategy.pml_flush_on_exit) if mmu.pml else None)
        self.lock = MmuLock()
        self.workload = make_workload(guest.workload, ram, vga, self.rng)
        self.now_ns = 0.0
        self.paused = False
        # Asked between steps: a long synchronous stretch stays interruptible (Ctrl-C).
        self.should_stop: Callable[[], bool] = _never
        self._schedule = ThrottleSchedule()  # auto-converge's: when the vCPUs may run
        self.stats = GuestStats()
        self._debt_ns = np.zeros(guest.vcpus)  # vCPU time owed to faults and stalls
        self._slice_no = 0
        self._chunk_ns = float(guest.slice_ns)  # the next event-driven chunk's length

    # ------------------------------------------------------------ layout

    @property
    def npages(self) -> int:
        """Guest frames in all slots together: valid gfns are 0..npages-1."""
        return self.memory.npages

    @property
    def pages(self) -> np.ndarray:
        """Every page's bytes as one array (a generated backing builds it: for tests)."""
        return self.memory.pages

    def slot(self, slot_id: int) -> MemSlot:
        return self.slots[slot_id]

    @property
    def vcpus(self) -> int:
        """The guest's vCPUs (each acks a remote TLB flush: the harvest's `Kvm.vcpus`)."""
        return self.guest.vcpus

    @property
    def n_used_mmu_pages(self) -> int:
        """Shadow pages in use, KVM's `kvm->arch.n_used_mmu_pages` (what the heuristic compares)."""
        return self.mmu.n_used_mmu_pages

    @property
    def throttle(self) -> float:
        """The share of each vCPU's time taken away by auto-converge (0 = unthrottled)."""
        return self._schedule.share

    @property
    def throttle_schedule(self) -> ThrottleSchedule:
        """When the throttle lets the vCPUs run (`ThrottleSchedule`)."""
        return self._schedule

    def set_throttle(self, share: float) -> None:
        """Throttle every vCPU to run (1 - share) of the time, as cpu_throttle_set does.

        Turned on, the throttle's timer ticks now: each vCPU sleeps 10 ms x share /
        (1 - share), runs 10 ms, and so on. A new share while throttling takes effect at
        the next tick, the period in progress running out as it began; the same share
        changes nothing; 0 lets the vCPUs run at once. A `paced` workload catches up on
        waking (see `ThrottleSchedule`, `Workload.owed`).
        Raise `ValueError` unless 0 <= share < 1 (QEMU caps cpu-throttle-max at 99 %).
        """
        if not 0.0 <= share < 1.0:
            raise ValueError(f"throttle {share!r} is not in [0, 1)")
        self._schedule = self._schedule.changed(float(share), self.now_ns)
        self._mmu_changed()

    def _process(self, vcpu: int) -> int:
        """The guest process a vCPU runs this slice; processes rotate as the scheduler would."""
        return (vcpu + self._slice_no) % self.mmu.layout.roots

    def _spte_ids(self, process: int | np.ndarray, gfns: np.ndarray) -> np.ndarray:
        """The spte each write goes through: the process's own mapping, else the direct map."""
        as_map = self.mmu.layout.address_space_map
        if as_map is None:
            return gfns
        ids = as_map[process, gfns]
        return np.where(ids >= 0, ids, gfns)

    # ------------------------------------------------------------ guest writes

    def write(self, vcpu: int, gfns: np.ndarray) -> tuple[int, int]:
        """vCPU `vcpu` writes each of `gfns`; return (write-protect faults, page faults).

        Raise `ValueError` if a gfn is outside guest memory.
        """
        gfns = np.asarray(gfns, dtype=np.int64)
        if len(gfns) == 0:
            return 0, 0
        if gfns.min() < 0 or gfns.max() >= self.npages:
            raise ValueError(f"gfn outside guest memory (0..{self.npages - 1})")
        faults = self._translate_writes(vcpu, gfns)
        self.memory.stamp(gfns)
        return faults

    def _translate_writes(self, vcpu: int, gfns: np.ndarray,
                          process: int | np.ndarray | None = None) -> tuple[int, int]:
        """The MMU side of writes: TLB, spte, faults and dirty bits (page bytes apart).

        The writes come from guest `process` (one, or one per write; default: the one
        `vcpu` runs this slice).
        """
        ids = self._spte_ids(self._process(vcpu) if process is None else process, gfns)
        missed = unique_ids(ids[~self.tlbs.lookup(vcpu, ids)], self.mmu.scratch)
        faulting = missed[~self.mmu.spte_writable[missed]]  # writable implies present
        present = self.mmu.spte_present[faulting]
        protected = faulting[present]
        absent = faulting[~present]
        if len(absent):
            created, zapped = self.mmu.fault_in(absent, busy=missed)
            if zapped:  # kvm_mmu_commit_zap_page flushes remote TLBs
                self.tlbs.flush_all()
                if self.pml is not None:  # each vCPU exits for it: its buffer is flushed
                    self.pml.exit_all()
                self.stats.zapped_pages += zapped
                self.stats.zap_flushes += 1
        self.mmu.make_writable(protected)
        faulted = np.concatenate([protected, absent])
        if not self.mmu.layout.ids_are_gfns:
            faulted = self.mmu.spte_gfn[faulted]
        self._mark_page_dirty(faulted)
        if self.pml is not None and self.pml.enabled:
            self._log_writes(vcpu, missed, faulted_in=len(absent) > 0)
        self.tlbs.fill(vcpu, missed)
        self.stats.writes += len(gfns)
        self.stats.write_faults += len(protected)
        self.stats.page_faults += len(absent)
        return len(protected), len(absent)

    def _log_writes(self, vcpu: int, missed: np.ndarray, faulted_in: bool) -> None:
        """PML: the writes that missed the TLB set the D bits still clear, and the CPU logs
        each such gfn in `vcpu`'s buffer (tdp: spte id == gfn). A page fault among them
        was a VM exit, which flushed the buffer."""
        clean = missed[~self.mmu.spte_dirty[missed]]  # writable: PML protects nothing
        self.mmu.spte_dirty[clean] = True
        self.stats.pml_full_exits += self.pml.log(vcpu, clean)
        self.stats.pml_logged += len(clean)
        if faulted_in:
            self.pml.exit([vcpu])

    def _mark_page_dirty(self, gfns: np.ndarray) -> None:
        """mark_page_dirty for each of `gfns` (any slot): its bit, if the slot logs."""
        if len(self.slots) == 1:  # every gfn is in it: one pass fewer per fault
            self.slots[0].mark_page_dirty(gfns)
        else:
            for slot in self.slots:
                slot.mark_page_dirty(gfns[slot.contains(gfns)])

    def advance(self, dt_ns: float) -> None:
        """Run the guest for `dt_ns` of guest time (nothing is written while paused).

        A paused guest's time moves in one step. A running guest's advances from event
        to event (or in slices of `guest.slice`, with `guest.advance = "slices"`), in at
        most about `MAX_SLICES_PER_ADVANCE` steps whatever the stretch's length.
        Raise `ValueError` if `dt_ns` is not finite, `GuestInterrupted` between two steps
        once `should_stop` says so.
        """
        if not math.isfinite(dt_ns):
            raise ValueError(f"guest time cannot advance by {dt_ns} ns")
        end = self.now_ns + dt_ns
        if self.paused:
            self.now_ns = max(self.now_ns, end)  # no slice would write: only time passes
        elif self.guest.advance == "slices":
            slice_ns = max(self.guest.slice_ns, dt_ns / MAX_SLICES_PER_ADVANCE)
            while self.now_ns < end:
                step = min(slice_ns, end - self.now_ns)
                self._run_slice(self.now_ns, step)
                self._step_done(self.now_ns + step)
        else:
            self._advance_by_events(end, dt_ns / MAX_SLICES_PER_ADVANCE)
        self.lock.expire(self.now_ns)

    def _advance_by_events(self, end: float, min_step_ns: float) -> None:
        """Run up to `end` in chunks that never cross a workload change, hold at most
        `CHUNK_WRITES` writes, and grow only while the vCPUs lose little time to faults.

        The chunk length starts at `guest.slice` after every MMU event (`_mmu_changed`) and
        doubles after each chunk in which no vCPU lost more than `MAX_CHUNK_LOAD` of its
        running time to faults and lock waits: the time a chunk's faults cost is repaid in
        the next chunk, so a chunk must be short where that time is large, as slices are.
        Throttled, a chunk ends where the vCPUs fall asleep, the sleep is one chunk, and
        the chunks start short again at the wake. No chunk is shorter than `min_step_ns`
        (but the last), which bounds their number: then a chunk may span many periods.
        """
        while self.now_ns < end:
            t = self.now_ns
            change = self.workload.next_change_ns(t)
            stop = min(end, max(change, t + min_step_ns))
            wake = self._schedule.asleep_until(t)
            if wake is not None:
                # Throttled, the vCPUs sleep: nothing runs or faults until the wake, so that
                # is one chunk; after it the chunks start short again, as after an event (a
                # paced guest catches up at the wake, all at once).
                chunk_end = min(stop, max(wake, t + min_step_ns))
                self._run_slice(t, chunk_end - t, by_time=True, end_ns=chunk_end)
                self._chunk_ns = float(self.guest.slice_ns)
                self._step_done(chunk_end)
                continue
            rate = self.workload.writes_per_s(t)
            length = min(self._chunk_ns, CHUNK_WRITES * NS_PER_S / rate if rate else math.inf)
            chunk_end = min(stop, t + max(length, min_step_ns))
            asleep = self._schedule.running_until(t)
            if asleep is not None:  # nor does a chunk run into a sleep
                chunk_end = min(chunk_end, max(asleep, t + min_step_ns))
            load = self._run_slice(t, chunk_end - t, by_time=True, end_ns=chunk_end)
            self._chunk_ns = (self.guest.slice_ns if load > MAX_CHUNK_LOAD or chunk_end >= change
                              else 2 * self._chunk_ns)
            self._step_done(chunk_end)

    def _mmu_changed(self) -> None:
        """An event that can change how many writes fault: chunks start short again."""
        self._chunk_ns = float(self.guest.slice_ns)

    def _step_done(self, now_ns: float) -> None:
        self.now_ns = now_ns
        if self.should_stop():
            raise GuestInterrupted(f"stopped at {self.now_ns / NS_PER_S:.3f} s guest time")

    def advance_to(self, t_ns: float) -> None:
        if t_ns > self.now_ns:
            self.advance(t_ns - self.now_ns)

    def _run_slice(self, t_ns: float, dt_ns: float, by_time: bool = False,
                   end_ns: float | None = None) -> float:
        """Run every vCPU for [t_ns, t_ns + dt_ns): one slice, or one chunk of a stretch.

        The vCPUs run when the throttle's schedule lets them, less the time they owe to
        faults and lock waits; a `paced` workload also writes what it owes for each throttle
        sleep that ends in the slice (`Workload.owed`), each vCPU an equal share.
        `by_time`: the guest process behind each write is the one its vCPU runs at the
        write's time (processes rotate every `guest.slice`), not the slice count's.
        `end_ns`: the slice's end as the caller counts time (default t_ns + dt_ns), so
        that a sleep or a wake at the boundary falls in exactly one of two slices.
        Return the largest share of its running time a vCPU ran up in debt (faults, lock
        waits): of the whole slice, unless throttled.
        """
        schedule = self._schedule
        if schedule.throttling:
            end = t_ns + dt_ns if end_ns is None else end_ns
            running, wakes = schedule.running_ns(t_ns, end), schedule.wakes(t_ns, end)
        else:
            running, wakes = dt_ns, []
        # Repay at the pace the debt was run up (spread over a slice), not all first; only
        # from running time: a sleeping vCPU repays nothing.
        share = np.minimum(self._debt_ns / self.guest.slice_ns, 1.0)
        owed = np.minimum(self._debt_ns, running * share)
        self._debt_ns -= owed
        active = (running - owed) / dt_ns
        if not active.any() and not wakes:
            return 0.0
        debt_before = self._debt_ns.copy()
        faults = np.zeros(self.guest.vcpus, dtype=np.int64)
        if active.any():
            gfns = self.workload.generate(self.rng, t_ns, dt_ns, float(active.mean()))
            # Each vCPU gets a share of the writes in proportion to the time it ran.
            bounds = np.rint(np.cumsum(active) / active.sum() * len(gfns)).astype(np.int64)
            start = 0
            for vcpu, stop in enumerate(bounds):  # a few vCPUs, not per write
                part = gfns[start:stop]
                process = self._processes(vcpu, t_ns, dt_ns, len(part)) if by_time else None
                faults[vcpu] += self._vcpu_writes(vcpu, part, process)
                start = stop
            # A page written twice here moves once: `stamp`'s fancy-indexed increment counts
            # an index once however often it repeats, so no unique pass over the writes.
            self.memory.stamp(gfns)
        for wake_ns, sleep_ns, count in wakes:
            faults += self._write_owed(wake_ns, sleep_ns, count, by_time)
        if self.lock.windows:
            stall = self.lock.stall_ns(t_ns, t_ns + dt_ns, faults)
            self._debt_ns += stall
            self.stats.vcpu_stall_ns += float(stall.sum())
        self._slice_no += 1
        return float((self._debt_ns - debt_before).max()) / running if running > 0 else math.inf

    def _write_owed(self, wake_ns: float, sleep_ns: float, count: int,
                    by_time: bool) -> np.ndarray:
        """A paced workload's catch-up on waking from `count` sleeps of `sleep_ns`; return
        each vCPU's faults."""
        faults = np.zeros(self.guest.vcpus, dtype=np.int64)
        for piece in self.workload.owed(self.rng, wake_ns, sleep_ns, count):
            # Every vCPU slept as long, so each owes as much: equal shares.
            bounds = np.rint(np.arange(1, self.guest.vcpus + 1) / self.guest.vcpus
                             * len(piece)).astype(np.int64)
            start = 0
            for vcpu, stop in enumerate(bounds):
                part = piece[start:stop]
                process = self._processes(vcpu, wake_ns, 0.0, len(part)) if by_time else None
                faults[vcpu] += self._vcpu_writes(vcpu, part, process)
                start = stop
            self.memory.stamp(piece)
        return faults

    def hold_vcpus(self, ns: float) -> None:
        """The vCPUs wait `ns` from now without running guest code, then go on (QEMU's
        BQL held by a userspace sync, which a TCG vCPU waits for); a paced workload then
        writes what it owes for the wait, as after a throttle sleep, once for the whole
        outage where the hold and a throttle sleep meet."""
        if ns <= 0 or self.paused:
            return
        start, schedule = self.now_ns, self._schedule
        # Off since the throttle sleep it is in, if any: one outage with the hold.
        off_from = start
        if (wake := schedule.asleep_until(start)) is not None:
            head = schedule.head
            off_from = wake - (head[1] - head[0] if head is not None and head[1] == wake
                               else schedule.sleep_ns)
        self.paused = True
        try:
            self.advance(ns)  # the wakes inside the hold are not wakes: the vCPUs stay off
        finally:
            self.paused = False
        # Running again now: the catch-up for the whole outage. Still asleep: the wake
        # that ends the sleep catches up for the sleep (the hold before it is not counted).
        if schedule.asleep_until(self.now_ns) is None:
            self._write_owed(self.now_ns, self.now_ns - off_from, 1,
                             by_time=self.guest.advance == "events")
        self._mmu_changed()

    def _vcpu_writes(self, vcpu: int, gfns: np.ndarray, process: int | np.ndarray | None) -> int:
        """vCPU `vcpu` writes `gfns` (page bytes apart); its faults' time becomes its debt.
        Return how many writes faulted."""
        wp, pf = self._translate_writes(vcpu, gfns, process)
        fault_ns = wp * self.costs.write_fault_ns + pf * self.costs.page_fault_ns
        self._debt_ns[vcpu] += fault_ns
        self.stats.fault_ns += fault_ns
        if self.pml is not None:  # PML exits and flushes, here and since the last writes
            owed = self.pml.take_owed()
            self._debt_ns += owed
            self.stats.pml_ns += float(owed.sum())
        return wp + pf

    def _processes(self, vcpu: int, t_ns: float, dt_ns: float, n: int) -> int | np.ndarray:
        """The guest process behind each of a vCPU's `n` writes spread evenly over the chunk:
        the one it runs in that write's quantum of `guest.slice`."""
        roots = self.mmu.layout.roots
        if roots == 1:
            return 0
        quantum = self.guest.slice_ns
        first, last = int(t_ns // quantum), int((t_ns + dt_ns) // quantum)
        if first == last or n == 0:
            return (vcpu + first) % roots
        at = t_ns + (np.arange(n) + 0.5) * (dt_ns / n)
        return (vcpu + (at // quantum).astype(np.int64)) % roots

    # ------------------------------------------------------------ lifecycle

    def prefill(self) -> None:
        """Write the workload's working set once, as a running program has touched its memory.

        Pages get text-like content; every process maps them in (shadow shape).
        Costs are not counted: this is before the migration.
        """
        gfns = self.workload.prefill_gfns()  # each workload (or part) minds its own `prefill`
        if len(gfns) == 0:
            return
        self.memory.fill(gfns, text_pool(self.rng))
        for process in range(self.mmu.layout.roots):
            self._translate_writes(0, gfns, process)  # fill() has stamped the pages already
        self.tlbs.flush_all()
        self.stats = GuestStats()

    def enable_dirty_logging(self) -> HarvestResult:
        """Set KVM_MEM_LOG_DIRTY_PAGES on every slot: clean bitmaps, every spte write-protected.

        KVM does this in kvm_arch_commit_memory_region with the slot walk and
        a flush; the result prices it (the guest runs meanwhile). With PML the
        vCPUs start logging and the walk clears D bits instead
        (kvm_mmu_slot_leaf_clear_dirty; it write-protects only huge sptes, which
        the model has none of).
        """
        results = []
        self._mmu_changed()
        if self.pml is not None:
            self.pml.enabled = True  # vmx_update_cpu_dirty_logging, before the D bits clear
        for slot in self.slots:
            slot.flags |= KVM_MEM_LOG_DIRTY_PAGES
            slot.dirty_bitmap[:] = False
            work = KernelWork(self, slot, "enable-dirty-logging")
            work.branch = "walk"
            if work.slot_remove_write_access():
                work.flush_remote_tlbs()
            results.append(work.result(np.empty(0, dtype=np.int64)))
        self._mmu_changed()
        return HarvestResult.merge(results)

    def pause(self) -> None:
        """QEMU stops the vCPUs: each leaves guest mode, and its exit flushes its PML buffer."""
        self.paused = True
        if self.pml is not None:
            self.pml.exit_all()

    def resume(self) -> None:
        self.paused = False
        self._mmu_changed()

    # ------------------------------------------------------------ harvest

    def harvest(self, slot_id: int, strategy: str | None = None) -> HarvestResult:
        """Harvest one slot's dirty log with `strategy` (default: the configured one).

        The guest runs for the harvest's modeled time, so `now_ns` moves by
        `kernel_ns`. Raise `KeyError` for an unknown strategy.
        """
        name = strategy or self.mmu_spec.strategy
        work = KernelWork(self, self.slots[slot_id], name)
        self._mmu_changed()
        gfns = STRATEGIES[name](work)
        self._mmu_changed()  # what it protected faults from now on
        return work.result(gfns)

    def sync_dirty_log(self, strategy: str | None = None) -> HarvestResult:
        """Harvest every slot that logs dirty pages, as QEMU's migration bitmap sync does."""
        results = [self.harvest(s.id, strategy) for s in self.slots if s.is_dirty_logging]
        return HarvestResult.merge(results)

    def dirty_pages_pending(self) -> int:
        return sum(s.nr_dirty_pages for s in self.slots)
