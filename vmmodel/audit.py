"""Userspace's side of dirty logging, kept by page version: which writes were seen.

`read(gfns)` records that userspace copied those pages (the migration sends
them); the invariant is that a page written after its last read is dirty in
its slot's bitmap (or, with PML, logged in a vCPU's PML buffer, which KVM
flushes into the bitmap at the vCPU's next exit), or the write is lost. The
broken strategies break it, and `unreported()` names the gfns. After the
final sync, with the vCPUs paused, no page may be `stale()` at all: a write
still held in a PML buffer then is lost too.
"""

from __future__ import annotations

import numpy as np

from vmmodel.vm import Vm


class DirtyLogAudit:
    def __init__(self, vm: Vm) -> None:
        self.vm = vm
        self.read_version = vm.memory.write_count.copy()

    def read(self, gfns: np.ndarray) -> None:
        """Userspace copied these pages now."""
        self.read_version[gfns] = self.vm.memory.write_count[gfns]

    def unreported(self) -> np.ndarray:
        """Gfns written since their last read that no dirty bitmap (nor PML buffer) reports:
        lost writes."""
        changed = self.vm.memory.write_count != self.read_version
        for slot in self.vm.slots:
            changed[slot.base_gfn : slot.end_gfn] &= ~slot.dirty_bitmap
        if self.vm.pml is not None:
            changed[self.vm.pml.pending()] = False
        return np.flatnonzero(changed)

    def stale(self) -> np.ndarray:
        """Gfns whose last read is older than their content (after a final sync: lost)."""
        return np.flatnonzero(self.vm.memory.write_count != self.read_version)
