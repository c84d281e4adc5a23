"""`rmap`: write-protect only what the dirty bitmap names, through the rmap.

The seed's first branch: for each set bit, take mmu_lock,
kvm_mmu_rmap_write_protect, drop it; one flush after the loop. A vCPU may
keep writing through a stale TLB entry until that flush, but only to a page
in the bitmap just taken, which userspace reads after the flush (the seed's
comment), so no write is lost.
"""

from __future__ import annotations

import numpy as np

from vmmodel.harvest.kernel import KernelWork


def harvest(work: KernelWork) -> np.ndarray:
    work.branch = "rmap"
    gfns = work.get_dirty_log()
    flush = work.rmap_write_protect(gfns)
    if flush:
        work.flush_remote_tlbs()
    return gfns
