"""Dirty-log harvest strategies: one interface, `harvest(work) -> gfns`.

`STRATEGIES` maps the names users give (config `mmu.strategy`) to them; each
entry says whether it is one of the deliberately broken variants, and the
correct and broken name lists are derived from that flag.
Run one through `Vm.harvest(slot_id, name)`, which returns a HarvestResult.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from vmmodel.harvest import broken, heuristic, masked, rmap, walk
from vmmodel.harvest.kernel import HarvestResult, KernelWork, Kvm


@dataclass(frozen=True)
class Strategy:
    """A harvest function and what it is for."""

    harvest: Callable[[KernelWork], np.ndarray]
    # Deliberately broken (for validation): the emulator must catch it losing writes.
    broken: bool = False
    # Needs PML (mmu.pml = true); a configuration error without it.
    needs_pml: bool = False
    # KVM flushes a vCPU's PML buffer at every VM exit, so GET_DIRTY_LOG's kick (and the
    # pause) reaches it; False: only at a PML-full exit (`pml-full-only`).
    pml_flush_on_exit: bool = True

    def __call__(self, work: KernelWork) -> np.ndarray:
        return self.harvest(work)


STRATEGIES: dict[str, Strategy] = {
    "walk": Strategy(walk.harvest),
    "rmap": Strategy(rmap.harvest),
    "heuristic": Strategy(heuristic.harvest),
    "masked": Strategy(masked.harvest),
    "rmap-noflush": Strategy(broken.rmap_skip_flush, broken=True),
    "protect-before-take": Strategy(broken.protect_before_take, broken=True),
    "masked-noflush": Strategy(broken.masked_skip_flush, broken=True),
    # `masked` on a KVM that reads a vCPU's PML buffer only when it is full
    # (handle_pml_full), not at every exit: neither GET_DIRTY_LOG's kick nor the pause
    # flushes what a buffer holds, so a partly filled one is never read.
    "pml-full-only": Strategy(masked.harvest, broken=True, needs_pml=True,
                              pml_flush_on_exit=False),
}
CORRECT_STRATEGIES = tuple(name for name, s in STRATEGIES.items() if not s.broken)
BROKEN_STRATEGIES = tuple(name for name, s in STRATEGIES.items() if s.broken)

__all__ = ["STRATEGIES", "CORRECT_STRATEGIES", "BROKEN_STRATEGIES", "HarvestResult",
           "KernelWork", "Kvm", "Strategy"]
