"""Deliberately broken harvests, for validation: the emulator must catch them losing writes.

Each differs from a correct strategy by one step, named in the function.
"""

from __future__ import annotations

import numpy as np

from vmmodel.harvest.kernel import KernelWork


def rmap_skip_flush(work: KernelWork) -> np.ndarray:
    """`rmap-noflush`: rmap protection without kvm_flush_remote_tlbs.

    Stale writable TLB entries outlive the harvest, so later writes through
    them neither fault nor set a dirty bit.
    """
    work.branch = "rmap"
    gfns = work.get_dirty_log()
    work.rmap_write_protect(gfns)
    return gfns


def protect_before_take(work: KernelWork) -> np.ndarray:
    """`protect-before-take`: write-protect the slot first, take and clear the bitmap after.

    A page written between the two faults, becomes writable and sets its bit;
    the take then clears that bit, and the page's later writes go unseen.
    """
    work.branch = "walk"
    flush = work.slot_remove_write_access()
    if flush:
        work.flush_remote_tlbs()
    return work.get_dirty_log()
