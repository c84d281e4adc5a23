"""The guest and the KVM x86 MMU model: pure, synchronous, numpy, deterministic per seed.

Public API: `Vm`, the parameter objects `GuestSpec`, `MmuSpec`, `WorkloadSpec`,
`CostTable`, the harvest registry `STRATEGIES` and `HarvestResult`, and
`DirtyLogAudit` for checking that no write was lost.
"""

from vmmodel.audit import DirtyLogAudit
from vmmodel.costs import CostTable
from vmmodel.harvest import BROKEN_STRATEGIES, CORRECT_STRATEGIES, STRATEGIES, HarvestResult
from vmmodel.spec import (
    MAX_GUEST_PAGES,
    MAX_WRITE_RATE,
    MIN_SLICE_NS,
    MMU_SHAPES,
    PAGE_SIZE,
    WORKLOAD_KINDS,
    GuestSpec,
    MmuSpec,
    SpecError,
    WorkloadSpec,
)
from vmmodel.vm import GuestStats, Vm

__all__ = [
    "BROKEN_STRATEGIES", "CORRECT_STRATEGIES", "PAGE_SIZE", "STRATEGIES", "CostTable",
    "DirtyLogAudit", "GuestSpec", "GuestStats", "HarvestResult", "MmuSpec", "SpecError",
    "Vm", "WorkloadSpec",
    "MAX_GUEST_PAGES", "MAX_WRITE_RATE", "MIN_SLICE_NS", "MMU_SHAPES", "WORKLOAD_KINDS",
]
