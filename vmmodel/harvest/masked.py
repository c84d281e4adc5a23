"""`masked`: kvm_get_dirty_log_protect, KVM's KVM_GET_DIRTY_LOG from 2012 on.

The seed author's follow-up to write_protect_slot (Takuya Yoshikawa, Linux
3.4): mmu_lock is taken once for the whole memslot, and for each 64-bit
word of the bitmap with a bit set, the word is xchg'd with 0 and
kvm_arch_mmu_enable_log_dirty_pt_masked re-protects exactly its gfns (on
tdp the word's leaf sptes, on shadow each gfn's 4K rmap). One remote TLB
flush follows the unlock, when any word was non-zero. Still how Linux 6.13
protects without manual protect (virt/kvm/kvm_main.c).

Its cost follows the dirty words, not n_used_mmu_pages; its lock hold, the
whole loop, grows with the slot's size (every word is tested under the lock).
"""

from __future__ import annotations

import numpy as np

from vmmodel.harvest.kernel import KernelWork


def harvest(work: KernelWork) -> np.ndarray:
    work.branch = "masked"
    gfns, flush = work.get_dirty_log_protect()
    if flush:  # after KVM_MMU_UNLOCK, kvm_flush_remote_tlbs_memslot
        work.flush_remote_tlbs()
    return gfns
