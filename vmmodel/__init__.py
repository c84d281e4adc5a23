"""The guest and the KVM x86 MMU model: pure, synchronous, numpy, deterministic per seed.

Public API: `Vm`, the parameter objects `GuestSpec`, `MmuSpec`, `WorkloadSpec`,
`CostTable` and the value lists they accept (`WORKLOAD_KINDS`, `MMU_SHAPES`,
`MEMORY_BACKINGS`, `GUEST_ADVANCES`), `GuestMemory` (the interface a page's bytes are read through),
the harvest registry `STRATEGIES` and `HarvestResult`, `DirtyLogAudit` for
checking that no write was lost, `text_pages` (guest-like page content, for
benches), and the units the model counts in
(`PAGE_SIZE`, `NS_PER_S`). migrate imports these from here, never from the
submodules.
"""

from vmmodel.audit import DirtyLogAudit
from vmmodel.content import text_pages
from vmmodel.costs import CostTable
from vmmodel.harvest import BROKEN_STRATEGIES, CORRECT_STRATEGIES, STRATEGIES, HarvestResult
from vmmodel.memory import GuestMemory
from vmmodel.spec import (
    GUEST_ADVANCES,
    MAX_GUEST_PAGES,
    MAX_WRITE_RATE,
    MEMORY_BACKINGS,
    MIN_SLICE_NS,
    MMU_SHAPES,
    NS_PER_S,
    PAGE_SIZE,
    WORKLOAD_KINDS,
    GuestSpec,
    MmuSpec,
    SpecError,
    WorkloadSpec,
)
from vmmodel.vm import GuestInterrupted, GuestStats, Vm

__all__ = [
    "BROKEN_STRATEGIES", "CORRECT_STRATEGIES", "GUEST_ADVANCES", "MAX_GUEST_PAGES",
    "MAX_WRITE_RATE",
    "MEMORY_BACKINGS", "MIN_SLICE_NS", "MMU_SHAPES", "NS_PER_S", "PAGE_SIZE", "STRATEGIES",
    "WORKLOAD_KINDS", "CostTable", "DirtyLogAudit", "GuestInterrupted", "GuestMemory",
    "GuestSpec", "GuestStats",
    "HarvestResult", "MmuSpec", "SpecError", "Vm", "WorkloadSpec", "text_pages",
]
