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
from typing import TYPE_CHECKING

import numpy as np

KVM_NR_PAGE_SIZES = 3  # arch/x86/include/asm/kvm_host.h (4K, 2M, 1G)

if TYPE_CHECKING:
    from vmmodel.memory import MemSlot
    from vmmodel.vm import Vm


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

    def __init__(self, vm: Vm, slot: MemSlot, strategy: str) -> None:
        self.vm = vm
        self.slot = slot
        self.costs = vm.costs
        self.strategy = strategy
        self.branch = strategy
        self.kernel_ns = 0.0
        self.counts = {"sptes_visited": 0, "shadow_pages_visited": 0, "rmap_steps": 0,
                       "lock_acquisitions": 0, "lock_hold_ns": 0.0, "tlb_flushes": 0}
        self.nr_dirty_pages = slot.nr_dirty_pages
        self.n_used_mmu_pages = vm.mmu.n_used_mmu_pages
        self._wall_start = time.perf_counter_ns()

    def _elapse(self, ns: float, *, hold_ns: float = 0.0, acquisitions: int = 0) -> None:
        """The step takes `ns` of kernel time; the guest runs meanwhile."""
        if acquisitions:
            self.vm.lock.hold(self.vm.now_ns, hold_ns, acquisitions, span_ns=ns)
            self.counts["lock_acquisitions"] += acquisitions
            self.counts["lock_hold_ns"] += hold_ns
        self.kernel_ns += ns
        self.vm.advance(ns)

    def get_dirty_log(self) -> np.ndarray:
        """KVM_GET_DIRTY_LOG's copy: take and clear the slot's bitmap."""
        gfns = self.slot.take_dirty_bitmap()
        c = self.costs
        self._elapse(c.get_dirty_log_ns + self.slot.bitmap_words * c.bitmap_word_ns)
        return gfns

    def peek_dirty_log(self) -> np.ndarray:
        """Read the bitmap without clearing it (only a broken ordering needs this)."""
        return self.slot.peek_dirty_gfns()

    def rmap_write_protect(self, gfns: np.ndarray) -> bool:
        """kvm_mmu_rmap_write_protect for each gfn, taking mmu_lock around each one."""
        if len(gfns) == 0:
            return False
        flush, steps = self.vm.mmu.rmap_write_protect(gfns)
        c = self.costs
        # kvm_mmu_rmap_write_protect looks up the gfn's rmap head at every page size
        # (4K, 2M, 1G: KVM_NR_PAGE_SIZES), whether or not huge pages are in use.
        hold = len(gfns) * KVM_NR_PAGE_SIZES * c.rmap_lookup_ns + steps * c.rmap_step_ns
        self.counts["rmap_steps"] += steps
        self._elapse(hold + len(gfns) * c.lock_acquire_ns, hold_ns=hold, acquisitions=len(gfns))
        return flush

    def slot_remove_write_access(self) -> bool:
        """kvm_mmu_slot_remove_write_access: every shadow page, under one mmu_lock hold."""
        flush, pages, sptes = self.vm.mmu.slot_remove_write_access(self.slot.id)
        c = self.costs
        hold = pages * c.shadow_page_visit_ns + sptes * c.spte_visit_ns
        self.counts["shadow_pages_visited"] += pages
        self.counts["sptes_visited"] += sptes
        self._elapse(hold + c.lock_acquire_ns, hold_ns=hold, acquisitions=1)
        return flush

    def flush_remote_tlbs(self) -> None:
        """kvm_flush_remote_tlbs: stale entries stay usable until every vCPU has acked."""
        self._elapse(self.costs.tlb_flush_cost_ns(self.vm.guest.vcpus))
        self.vm.tlbs.flush_all()
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
