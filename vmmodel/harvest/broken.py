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


def masked_skip_flush(work: KernelWork) -> np.ndarray:
    """`masked-noflush`: kvm_get_dirty_log_protect without the flush after the unlock.

    As `rmap-noflush`: a translation cached writable (with PML: with its D bit)
    keeps letting its vCPU write without a fault or a log after its spte was
    re-protected, so those writes set no bit.
    """
    work.branch = "masked"
    gfns, _ = work.get_dirty_log_protect()
    return gfns
