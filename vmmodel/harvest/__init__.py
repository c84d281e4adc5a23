"""Dirty-log harvest strategies: one interface, `harvest(work) -> gfns`.

`STRATEGIES` maps the names users give (config `mmu.strategy`) to them.
Run one through `Vm.harvest(slot_id, name)`, which returns a HarvestResult.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from vmmodel.harvest import broken, heuristic, rmap, walk
from vmmodel.harvest.kernel import HarvestResult, KernelWork

Strategy = Callable[[KernelWork], np.ndarray]

STRATEGIES: dict[str, Strategy] = {
    "walk": walk.harvest,
    "rmap": rmap.harvest,
    "heuristic": heuristic.harvest,
    "rmap-noflush": broken.rmap_skip_flush,
    "protect-before-take": broken.protect_before_take,
}
CORRECT_STRATEGIES = ("walk", "rmap", "heuristic")
BROKEN_STRATEGIES = ("rmap-noflush", "protect-before-take")

__all__ = ["STRATEGIES", "CORRECT_STRATEGIES", "BROKEN_STRATEGIES", "HarvestResult",
           "KernelWork", "Strategy"]
