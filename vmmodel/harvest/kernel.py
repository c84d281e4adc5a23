"""One dirty-log harvest in progress: each step's effect, its price, and the guest meanwhile.

A strategy is a short sequence of KVM steps (take the bitmap, write-protect,
flush). Each step takes effect when it starts, is priced by the cost table,
and the guest keeps running for that long, so that writes through stale TLB
entries, faults that wait on mmu_lock, and the broken orderings all happen
as they would. Steps that change sptes return whether a flush is needed.

With PML (`Kvm.pml`), taking the bitmap first kicks every vCPU, whose exit
flushes its PML buffer into the bitmap (kvm_arch_sync_dirty_log), and every
step that write-protects clears D bits instead, as KVM does when
`kvm_x86_ops.cpu_dirty_log_size` is set.
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
from vmmodel.pml import PmlLog
from vmmodel.tlb import Tlbs

KVM_NR_PAGE_SIZES = 3  # arch/x86/include/asm/kvm_host.h (4K, 2M, 1G)
BITS_PER_LONG_SHIFT = 6  # a dirty bitmap word covers 64 pages


def nonzero_words(slot: MemSlot, gfns: np.ndarray) -> int:
    """How many 64-bit words of `slot`'s bitmap the sorted `gfns` set bits in."""
    if len(gfns) == 0:
        return 0
    words = (gfns - slot.base_gfn) >> BITS_PER_LONG_SHIFT
    return int(np.count_nonzero(words[1:] != words[:-1])) + 1


class Kvm(Protocol):
    """What a harvest works on, as KVM's dirty-log code is handed a `struct kvm *`.

    The MMU and the vCPUs' TLBs it changes, the vCPUs' PML buffers (None
    without PML), the mmu_lock it takes, the cost table that prices each step,
    and the guest's time, which runs on while the kernel works. `Vm` is one; a
    test can pass a small stand-in.
    """

    mmu: Mmu
    tlbs: Tlbs
    pml: PmlLog | None
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
    # sptes whose W bit (D bit, with PML) the harvest cleared: what it re-armed
    sptes_cleared: int = 0
    words_scanned: int = 0  # 64-bit words of the dirty bitmap read (all of them, every way)
    words_nonzero: int = 0  # ...of which had a bit set (masked: each one xchg'd, protected)
    lock_acquisitions: int = 0
    lock_hold_ns: float = field(default=0.0, metadata={"whole": True})
    # The longest single mmu_lock hold: a vCPU that faults meanwhile can wait that long.
    longest_lock_hold_ns: float = field(default=0.0, metadata={"whole": True})
    tlb_flushes: int = 0
    pml_flushed: int = 0  # GPAs the kick moved from the vCPUs' PML buffers into the bitmap
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
        summed["longest_lock_hold_ns"] = max(r.longest_lock_hold_ns for r in results)
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
                       "sptes_cleared": 0, "words_scanned": 0, "words_nonzero": 0,
                       "lock_acquisitions": 0, "lock_hold_ns": 0.0,
                       "longest_lock_hold_ns": 0.0, "tlb_flushes": 0, "pml_flushed": 0}
        self.nr_dirty_pages = slot.nr_dirty_pages
        self.n_used_mmu_pages = kvm.mmu.n_used_mmu_pages
        self._kicked = False
        self._wall_start = time.perf_counter_ns()

    @property
    def pml(self) -> bool:
        """PML is on: the protecting steps clear D bits, not W bits."""
        return self.kvm.pml is not None

    def _elapse(self, ns: float, *, hold_ns: float = 0.0, acquisitions: int = 0,
                longest_ns: float | None = None) -> None:
        """The step takes `ns` of kernel time; the guest runs meanwhile.

        It takes mmu_lock `acquisitions` times for `hold_ns` in all, the longest hold
        `longest_ns` (default: the average one).
        """
        if acquisitions:
            self.kvm.lock.hold(self.kvm.now_ns, hold_ns, acquisitions, span_ns=ns)
            self.counts["lock_acquisitions"] += acquisitions
            self.counts["lock_hold_ns"] += hold_ns
            longest = hold_ns / acquisitions if longest_ns is None else longest_ns
            self.counts["longest_lock_hold_ns"] = max(self.counts["longest_lock_hold_ns"],
                                                      longest)
        self.kernel_ns += ns
        self.kvm.advance(ns)

    def sync_dirty_log(self) -> None:
        """kvm_arch_sync_dirty_log: with PML, kvm_vcpu_kick every vCPU (once per harvest).

        Each kicked vCPU exits, and KVM flushes a vCPU's PML buffer at every exit,
        so what the CPUs logged is in the bitmap before it is taken. The kick does
        not wait for the exits; the model flushes at once.
        """
        if self.kvm.pml is None or self._kicked:
            return
        self._kicked = True
        flushed = self.kvm.pml.kick()
        self.counts["pml_flushed"] += flushed
        self.nr_dirty_pages = self.slot.nr_dirty_pages  # what the bitmap now holds
        self._elapse(self.kvm.vcpus * self.costs.pml_kick_ns)

    def _take_dirty_bitmap(self) -> np.ndarray:
        gfns = self.slot.take_dirty_bitmap()
        self.counts["words_scanned"] += self.slot.bitmap_words
        self.counts["words_nonzero"] += nonzero_words(self.slot, gfns)
        return gfns

    def get_dirty_log(self) -> np.ndarray:
        """KVM_GET_DIRTY_LOG's copy: take and clear the slot's bitmap (after the PML kick)."""
        self.sync_dirty_log()
        gfns = self._take_dirty_bitmap()
        c = self.costs
        self._elapse(c.get_dirty_log_ns + self.slot.bitmap_words * c.bitmap_word_ns)
        return gfns

    def get_dirty_log_protect(self) -> tuple[np.ndarray, bool]:
        """kvm_get_dirty_log_protect (2012 on, without manual protect): mmu_lock held once
        for the whole slot; per non-zero 64-bit word an xchg and
        kvm_arch_mmu_enable_log_dirty_pt_masked, re-protecting exactly its gfns.

        tdp: the TDP iterator over each word's leaf sptes (kvm_tdp_mmu_clear_dirty_pt_masked).
        shadow: per gfn its 4K rmap and every spte in it (kvm_mmu_write_protect_pt_masked).
        Return (the gfns, whether a flush is needed: KVM flushes once any word was
        non-zero, whether or not an spte changed).
        """
        self.sync_dirty_log()
        gfns = self._take_dirty_bitmap()
        mmu, c, words = self.kvm.mmu, self.costs, self.slot.bitmap_words
        nonzero = nonzero_words(self.slot, gfns)
        if self.kvm.mmu.layout.ids_are_gfns:
            _, visited, cleared = mmu.tdp_clear_dirty_pt_masked(
                self.slot.base_gfn, gfns, wrprot=not self.pml)
            protect = nonzero * c.tdp_walk_ns + visited * c.spte_visit_ns \
                + cleared * c.spte_clear_ns
            self.counts["sptes_visited"] += visited
        else:
            clear = mmu.rmap_clear_dirty if self.pml else mmu.rmap_write_protect
            _, steps, cleared = clear(gfns) if len(gfns) else (False, 0, 0)
            protect = len(gfns) * c.rmap_lookup_ns + steps * c.rmap_step_ns  # 4K rmaps only
            self.counts["rmap_steps"] += steps
        self.counts["sptes_cleared"] += cleared
        # Under the lock: the loop tests every word, xchg's the non-zero ones and protects.
        hold = words * c.bitmap_word_ns + nonzero * c.word_xchg_ns + protect
        # Outside it: the ioctl, the second bitmap's memset and copy_to_user.
        outside = c.get_dirty_log_ns + words * c.bitmap_word_ns
        self._elapse(outside + hold + c.lock_acquire_ns, hold_ns=hold, acquisitions=1)
        return gfns, nonzero > 0

    def rmap_write_protect(self, gfns: np.ndarray) -> bool:
        """kvm_mmu_rmap_write_protect for each gfn, taking mmu_lock around each one
        (with PML: clear D instead, __rmap_clear_dirty)."""
        if len(gfns) == 0:
            return False
        mmu = self.kvm.mmu
        lens = mmu.rmap_len[gfns]
        clear = mmu.rmap_clear_dirty if self.pml else mmu.rmap_write_protect
        flush, steps, cleared = clear(gfns)
        c = self.costs
        # kvm_mmu_rmap_write_protect looks up the gfn's rmap head at every page size
        # (4K, 2M, 1G: KVM_NR_PAGE_SIZES), whether or not huge pages are in use.
        lookups = KVM_NR_PAGE_SIZES * c.rmap_lookup_ns
        hold = len(gfns) * lookups + steps * c.rmap_step_ns
        self.counts["rmap_steps"] += steps
        self.counts["sptes_cleared"] += cleared
        self._elapse(hold + len(gfns) * c.lock_acquire_ns, hold_ns=hold, acquisitions=len(gfns),
                     longest_ns=lookups + int(lens.max()) * c.rmap_step_ns)
        return flush

    def slot_remove_write_access(self) -> bool:
        """kvm_mmu_slot_remove_write_access: every shadow page, under one mmu_lock hold
        (with PML: kvm_mmu_slot_leaf_clear_dirty, D bits instead)."""
        mmu = self.kvm.mmu
        clear = mmu.slot_leaf_clear_dirty if self.pml else mmu.slot_remove_write_access
        flush, pages, sptes, cleared = clear(self.slot.id)
        c = self.costs
        hold = pages * c.shadow_page_visit_ns + sptes * c.spte_visit_ns
        self.counts["shadow_pages_visited"] += pages
        self.counts["sptes_visited"] += sptes
        self.counts["sptes_cleared"] += cleared
        self._elapse(hold + c.lock_acquire_ns, hold_ns=hold, acquisitions=1)
        return flush

    def flush_remote_tlbs(self) -> None:
        """kvm_flush_remote_tlbs: stale entries stay usable until every vCPU has acked.

        Each vCPU exits to service the request, and with PML that exit flushes its
        buffer (into the bitmap the next harvest takes).
        """
        self._elapse(self.costs.tlb_flush_cost_ns(self.kvm.vcpus))
        self.kvm.tlbs.flush_all()
        if self.kvm.pml is not None:
            self.kvm.pml.exit_all()
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
