"""`walk`: write-protect the slot by walking every shadow page under one lock hold.

KVM before the seed patch: kvm_vm_ioctl_get_dirty_log swaps the bitmap,
then kvm_mmu_slot_remove_write_access, then one flush. Its cost follows
n_used_mmu_pages, not the number of dirty pages.
"""

from __future__ import annotations

import numpy as np

from vmmodel.harvest.kernel import KernelWork


def harvest(work: KernelWork) -> np.ndarray:
    work.branch = "walk"
    gfns = work.get_dirty_log()
    flush = work.slot_remove_write_access()
    if flush:
        work.flush_remote_tlbs()
    return gfns
