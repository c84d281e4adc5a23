"""One dirty-log harvest in progress: each step's effect, its price, and the guest meanwhile.

A strategy is a short sequence of KVM steps (take the bitmap, write-protect,
flush). Each step takes effect when it starts, is priced by the cost table,
and the guest keeps running for that long, so that writes through stale TLB
entries, faults that wait on mmu_lock, and the broken orderings all happen
as they would. Steps that change sptes return whether a flush is needed.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from vmmodel.costs import CostTable
from vmmodel.lock import MmuLock
from vmmodel.memory import MemSlot
from vmmodel.mmu import Mmu
from vmmodel.tlb import Tlbs

KVM_NR_PAGE_SIZES = 3  # arch/x86/include/asm/kvm_host.h (4K, 2M, 1G)


class Kvm(Protocol):
    """What a harvest works on, as KVM's dirty-log code is handed a `struct kvm *`.

    The MMU and the vCPUs' TLBs it changes, the mmu_lock it takes, the cost
    table that prices each step, and the guest's time, which runs on while the
    kernel works. `Vm` is one; a test can pass a small stand-in.
    """

    mmu: Mmu
    tlbs: Tlbs
    lock: MmuLock
    costs: CostTable

    @property
    def vcpus(self) -> int:
        """Running vCPUs: each must ack a remote TLB flush."""
        ...

    @property
    def now_ns(self) -> float:
        """Guest time now: where the step's mmu_lock window starts."""
        ...

    def advance(self, dt_ns: float) -> None:
        """Run the guest for `dt_ns` while the kernel works."""
        ...


@dataclass(frozen=True)
class HarvestResult:
    """What one harvest returned and what it cost.

    The field metadata is the report's spelling (read by migrate.record, which
    vmmodel never imports): the gfns stay out of the record, ns totals are whole.
    """

    gfns: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64),
                             compare=False, metadata={"skip": True})  # dirty gfns, sorted
    strategy: str = ""
    branch: str = ""  # what actually ran: "walk" or "rmap" (the heuristic's choice)
    kernel_ns: float = field(default=0.0, metadata={"key": "modeled-ns", "whole": True})
    wall_ns: int = 0  # the emulator's own time
    sptes_visited: int = 0
    shadow_pages_visited: int = 0
    rmap_steps: int = 0
    lock_acquisitions: int = 0
    lock_hold_ns: float = field(default=0.0, metadata={"whole": True})
    tlb_flushes: int = 0
    nr_dirty_pages: int = 0  # bits set when the harvest started
    n_used_mmu_pages: int = 0  # shadow pages in use when it started
    slot: str = ""  # the memslot's name ("ram+vga" for a sync over both)
    # A sync over several slots: each one's own record (the heuristic decides per slot).
    slots: tuple[HarvestResult, ...] = field(default=(), metadata={"omit-empty": True})

    @classmethod
    def merge(cls, results: list[HarvestResult]) -> HarvestResult:
        """One record for a sync that harvested several slots."""
        if len(results) == 1:
            return results[0]
        summed = {
            f.name: sum(getattr(r, f.name) for r in results)
            for f in dataclasses.fields(cls)
            if f.name not in ("gfns", "strategy", "branch", "slot", "slots")
        }
        summed["n_used_mmu_pages"] = results[0].n_used_mmu_pages
        return cls(
            gfns=np.concatenate([r.gfns for r in results]),
            strategy=results[0].strategy,
            branch="+".join(r.branch for r in results),
            slot="+".join(r.slot for r in results),
            slots=tuple(results),
            **summed,
        )


class KernelWork:
    """The steps of one harvest of `slot`, priced and interleaved with the guest."""

    def __init__(self, kvm: Kvm, slot: MemSlot, strategy: str) -> None:
        self.kvm = kvm
        self.slot = slot
        self.costs = kvm.costs
        self.strategy = strategy
        self.branch = strategy
        self.kernel_ns = 0.0
        self.counts = {"sptes_visited": 0, "shadow_pages_visited": 0, "rmap_steps": 0,
                       "lock_acquisitions": 0, "lock_hold_ns": 0.0, "tlb_flushes": 0}
        self.nr_dirty_pages = slot.nr_dirty_pages
        self.n_used_mmu_pages = kvm.mmu.n_used_mmu_pages
        self._wall_start = time.perf_counter_ns()

    def _elapse(self, ns: float, *, hold_ns: float = 0.0, acquisitions: int = 0) -> None:
        """The step takes `ns` of kernel time; the guest runs meanwhile."""
        if acquisitions:
            self.kvm.lock.hold(self.kvm.now_ns, hold_ns, acquisitions, span_ns=ns)
            self.counts["lock_acquisitions"] += acquisitions
            self.counts["lock_hold_ns"] += hold_ns
        self.kernel_ns += ns
        self.kvm.advance(ns)

    def get_dirty_log(self) -> np.ndarray:
        """KVM_GET_DIRTY_LOG's copy: take and clear the slot's bitmap."""
        gfns = self.slot.take_dirty_bitmap()
        c = self.costs
        self._elapse(c.get_dirty_log_ns + self.slot.bitmap_words * c.bitmap_word_ns)
        return gfns

    def rmap_write_protect(self, gfns: np.ndarray) -> bool:
        """kvm_mmu_rmap_write_protect for each gfn, taking mmu_lock around each one."""
        if len(gfns) == 0:
            return False
        flush, steps, _ = self.kvm.mmu.rmap_write_protect(gfns)
        c = self.costs
        # kvm_mmu_rmap_write_protect looks up the gfn's rmap head at every page size
        # (4K, 2M, 1G: KVM_NR_PAGE_SIZES), whether or not huge pages are in use.
        hold = len(gfns) * KVM_NR_PAGE_SIZES * c.rmap_lookup_ns + steps * c.rmap_step_ns
        self.counts["rmap_steps"] += steps
        self._elapse(hold + len(gfns) * c.lock_acquire_ns, hold_ns=hold, acquisitions=len(gfns))
        return flush

    def slot_remove_write_access(self) -> bool:
        """kvm_mmu_slot_remove_write_access: every shadow page, under one mmu_lock hold."""
        flush, pages, sptes, _ = self.kvm.mmu.slot_remove_write_access(self.slot.id)
        c = self.costs
        hold = pages * c.shadow_page_visit_ns + sptes * c.spte_visit_ns
        self.counts["shadow_pages_visited"] += pages
        self.counts["sptes_visited"] += sptes
        self._elapse(hold + c.lock_acquire_ns, hold_ns=hold, acquisitions=1)
        return flush

    def flush_remote_tlbs(self) -> None:
        """kvm_flush_remote_tlbs: stale entries stay usable until every vCPU has acked."""
        self._elapse(self.costs.tlb_flush_cost_ns(self.kvm.vcpus))
        self.kvm.tlbs.flush_all()
        self.counts["tlb_flushes"] += 1

    def result(self, gfns: np.ndarray) -> HarvestResult:
        return HarvestResult(
            gfns=np.sort(gfns),
            strategy=self.strategy,
            branch=self.branch,
            kernel_ns=self.kernel_ns,
            wall_ns=time.perf_counter_ns() - self._wall_start,
            nr_dirty_pages=self.nr_dirty_pages,
            n_used_mmu_pages=self.n_used_mmu_pages,
            slot=self.slot.name,
            **self.counts,
        )
