"""Counted MMU operations turned into modeled nanoseconds.

Python time is not kernel time: the model counts what KVM would do, and a
CostTable (configs/costs/*.toml, each constant with its source) prices it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from vmmodel.spec import SpecError


@dataclass(frozen=True)
class CostTable:
    """Nanoseconds per counted operation."""

    name: str = "kvm-x86"
    get_dirty_log_ns: float = 2_000.0  # the ioctl itself: entry, memslot swap
    bitmap_word_ns: float = 1.0  # copy and clear one 64-bit word of the dirty bitmap
    shadow_page_visit_ns: float = 20.0  # walk: next entry of active_mmu_pages, slot test
    spte_visit_ns: float = 1.0  # walk: test (and clear) one spte
    rmap_lookup_ns: float = 10.0  # __gfn_to_rmap: one rmap head (per gfn and page size)
    rmap_step_ns: float = 5.0  # follow one rmap entry and clear its W bit
    lock_acquire_ns: float = 20.0  # spin_lock + spin_unlock of mmu_lock, uncontended
    tlb_flush_ns: float = 2_000.0  # kvm_flush_remote_tlbs: the requesting side
    tlb_flush_per_vcpu_ns: float = 500.0  # IPI and INVEPT per running vCPU
    write_fault_ns: float = 1_500.0  # write-protect fault: VM exit, fast_page_fault, entry
    page_fault_ns: float = 3_000.0  # fault that instantiates an spte
    zap_page_ns: float = 1_000.0  # zap one shadow page (512 sptes, rmap removal)
    # kvm_get_dirty_log_protect (`masked`), under one mmu_lock hold per memslot:
    word_xchg_ns: float = 7.0  # xchg one non-zero bitmap word (an implicitly locked RMW)
    tdp_walk_ns: float = 20.0  # tdp: the iterator's descent to a word's 4K leaf table
    spte_clear_ns: float = 7.0  # tdp: clear W or D of one leaf spte (an atomic AND)
    # PML (mmu.pml): the vCPU's side, then the ioctl's kick.
    pml_exit_ns: float = 500.0  # a PML-full exit (or a kick's): exit and re-entry, no handler
    pml_entry_ns: float = 20.0  # vmx_flush_pml_buffer: one logged GPA into the dirty bitmap
    pml_kick_ns: float = 200.0  # kvm_arch_sync_dirty_log: kvm_vcpu_kick of one vCPU (no wait)
    # Host userspace, not KVM: the migration thread compressing a page with lz4.
    lz4_page_shrunk_ns: float = 5_000.0  # a page of a batch that lz4 shrank
    lz4_page_raw_ns: float = 400.0  # a page of a batch it could not shrink (sent raw)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.name != "name" and not getattr(self, f.name) >= 0:
                raise SpecError(f"costs.{f.name}: must be a non-negative number of ns")

    def tlb_flush_cost_ns(self, vcpus: int) -> float:
        return self.tlb_flush_ns + self.tlb_flush_per_vcpu_ns * vcpus

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CostTable:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise SpecError(f"costs: unknown constant(s) {sorted(unknown)}")
        return cls(**data)
