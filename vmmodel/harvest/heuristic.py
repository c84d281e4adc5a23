"""`heuristic`: the seed's write_protect_slot.

rmap when `nr_dirty_pages < n_used_mmu_pages` ("not so many dirty pages
compared to the number of shadow pages"), else the slot walk. Always rmap
for a small VGA framebuffer slot, as Avi Kivity notes in the review.
"""

from __future__ import annotations

import numpy as np

from vmmodel.harvest import rmap, walk
from vmmodel.harvest.kernel import KernelWork


def harvest(work: KernelWork) -> np.ndarray:
    if work.nr_dirty_pages < work.n_used_mmu_pages:
        return rmap.harvest(work)
    return walk.harvest(work)
