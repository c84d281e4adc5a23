"""The guest and the KVM x86 MMU model: pure, synchronous, numpy, deterministic per seed.

Public API: `Vm`, the parameter objects `GuestSpec`, `MmuSpec`, `WorkloadSpec`,
`CostTable` and the value lists they accept (`WORKLOAD_KINDS`, `MMU_SHAPES`,
`MEMORY_BACKINGS`, `GUEST_ADVANCES`), `GuestMemory` (the interface a page's bytes are read through),
the harvest registry `STRATEGIES` and `HarvestResult`, `DirtyLogAudit` for
checking that no write was lost, `text_pages` (guest-like page content, for
benches), the units the model counts in
(`PAGE_SIZE`, `NS_PER_S`), and the layout and backing constants a host-memory
estimate needs (`SPTES_PER_PAGE`, `REGION_ALIGN`, `AUTO_GENERATED_PAGES`).
migrate imports these from here, never from the submodules.
"""

from vmmodel.audit import DirtyLogAudit
from vmmodel.content import text_pages
from vmmodel.costs import CostTable
from vmmodel.harvest import BROKEN_STRATEGIES, CORRECT_STRATEGIES, STRATEGIES, HarvestResult
from vmmodel.layout import REGION_ALIGN, SPTES_PER_PAGE
from vmmodel.memory import AUTO_GENERATED_PAGES, GuestMemory
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
    "AUTO_GENERATED_PAGES", "BROKEN_STRATEGIES", "CORRECT_STRATEGIES", "GUEST_ADVANCES",
    "MAX_GUEST_PAGES", "MAX_WRITE_RATE", "MEMORY_BACKINGS", "MIN_SLICE_NS", "MMU_SHAPES",
    "NS_PER_S", "PAGE_SIZE", "REGION_ALIGN", "SPTES_PER_PAGE", "STRATEGIES", "WORKLOAD_KINDS",
    "CostTable", "DirtyLogAudit", "GuestInterrupted", "GuestMemory", "GuestSpec", "GuestStats",
    "HarvestResult", "MmuSpec", "SpecError", "Vm", "WorkloadSpec", "text_pages",
]
