"""`heuristic`: the seed's write_protect_slot.

rmap when `nr_dirty_pages < n_used_mmu_pages` ("not so many dirty pages
compared to the number of shadow pages"), else the slot walk. The slot's
dirty count is compared with the whole VM's shadow pages, so in the review
Avi Kivity expects a small VGA framebuffer slot always to take rmap; with
few shadow pages in use (tdp) a repainted framebuffer can still walk.
With PML the count is taken after the kick has flushed the vCPUs' buffers.
"""

from __future__ import annotations

import numpy as np

from vmmodel.harvest import rmap, walk
from vmmodel.harvest.kernel import KernelWork


def harvest(work: KernelWork) -> np.ndarray:
    work.sync_dirty_log()  # with PML, the buffers' GPAs count: the kick comes first
    if work.nr_dirty_pages < work.n_used_mmu_pages:
        return rmap.harvest(work)
    return walk.harvest(work)
