"""Page-modification logging (Intel PML): each vCPU's log of the pages it dirtied.

With PML, KVM clears D bits instead of W bits, so a write never faults: the
first write through an spte whose D bit is clear (a TLB miss: a cached
translation already has D) sets D, and the CPU logs the GPA in the vCPU's
512-entry buffer (`PML_ENTITY_NUM`, arch/x86/kvm/vmx/vmx.h). A full buffer is
a VM exit. KVM flushes a vCPU's buffer into the dirty bitmap at the start of
every VM exit (`vmx_flush_pml_buffer`, from `__vmx_handle_exit`), which is why
KVM_GET_DIRTY_LOG only kicks every vCPU out of guest mode
(`kvm_arch_sync_dirty_log`). A GPA logged but not yet flushed is dirty: KVM
holds it, the bitmap does not yet.

The exits the model has: PML-full, the kick, the remote TLB flush (each vCPU
exits to service its request), a page fault and the pause (QEMU stops the
vCPUs). Others (timer ticks, HLT, I/O, the throttle's sleeps) are not modeled:
a real vCPU's buffer is flushed more often, so the model's PML-full exits are
an upper bound, and what a sync reports is the same (the kick flushes the rest).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from vmmodel.costs import CostTable

PML_ENTITY_NUM = 512  # arch/x86/kvm/vmx/vmx.h (.cpu_dirty_log_size, vmx/main.c)


class PmlLog:
    """The vCPUs' PML buffers: what each holds, when KVM flushes them, what that costs.

    `mark_page_dirty(gfns)` is where a flush puts the GPAs (the memslots'
    bitmaps). `flush_on_exit` is KVM's behaviour (flush at every exit); without
    it only a PML-full exit flushes, the deliberately broken `pml-full-only`.
    The vCPU time exits and flushes cost accrues in `owed_ns`, which the guest
    takes (`take_owed`) as it does the time its faults cost.
    """

    def __init__(self, vcpus: int, costs: CostTable,
                 mark_page_dirty: Callable[[np.ndarray], None], *,
                 flush_on_exit: bool = True) -> None:
        self.buffers = np.full((vcpus, PML_ENTITY_NUM), -1, dtype=np.int64)
        self.fill = np.zeros(vcpus, dtype=np.int64)
        self.costs = costs
        self.mark_page_dirty = mark_page_dirty
        self.flush_on_exit = flush_on_exit
        # vmx_update_cpu_dirty_logging: PML is on only while some memslot logs dirty pages.
        self.enabled = False
        self.full_exits = np.zeros(vcpus, dtype=np.int64)
        self.logged = 0  # GPAs the CPU logged
        self.flushed = 0  # GPAs KVM moved into the bitmap
        self.owed_ns = np.zeros(vcpus)

    @property
    def vcpus(self) -> int:
        return len(self.fill)

    def log(self, vcpu: int, gfns: np.ndarray) -> int:
        """vCPU `vcpu` set the D bits of `gfns` (unique, in write order): the CPU logs each.

        A full buffer (512 entries) exits on the next log attempt, not on the 512th entry
        (Intel SDM, PML: the exit comes when the index has run past 0; the write that
        found it full is logged after re-entry); KVM flushes the buffer at the exit. What
        is left of `gfns` stays pending, a full buffer included. Return the PML-full
        exits it took.
        """
        n = len(gfns)
        if n == 0:
            return 0
        self.logged += n
        fill = int(self.fill[vcpu])
        total = fill + n
        exits = (total - 1) // PML_ENTITY_NUM  # the 513th log attempt exits
        if exits == 0:
            self.buffers[vcpu, fill:total] = gfns
            self.fill[vcpu] = total
            return 0
        log = np.concatenate([self.buffers[vcpu, :fill], gfns])
        left = total - exits * PML_ENTITY_NUM
        self._flush_to_bitmap(vcpu, log[: total - left])
        self.buffers[vcpu, :left] = log[total - left:]
        self.fill[vcpu] = left
        self.full_exits[vcpu] += exits
        self.owed_ns[vcpu] += exits * self.costs.pml_exit_ns
        return exits

    def exit(self, vcpus: np.ndarray | range | list[int]) -> int:
        """Each of `vcpus` takes a VM exit that KVM handles (a page fault, a TLB flush
        request, the pause): KVM flushes its buffer first. Return the GPAs flushed."""
        if not self.flush_on_exit:
            return 0
        flushed = 0
        for vcpu in vcpus:  # a few vCPUs, not per write
            fill = int(self.fill[vcpu])
            if fill:
                self._flush_to_bitmap(vcpu, self.buffers[vcpu, :fill].copy())
                self.fill[vcpu] = 0
                flushed += fill
        return flushed

    def exit_all(self) -> int:
        return self.exit(range(self.vcpus))

    def kick(self) -> int:
        """kvm_arch_sync_dirty_log: kvm_vcpu_kick every vCPU, which exits (its exit flushes
        its buffer). Return the GPAs flushed into the bitmap."""
        self.owed_ns += self.costs.pml_exit_ns
        return self.exit_all()

    def _flush_to_bitmap(self, vcpu: int, gfns: np.ndarray) -> None:
        """vmx_flush_pml_buffer: kvm_vcpu_mark_page_dirty for each logged GPA."""
        self.mark_page_dirty(gfns)
        self.flushed += len(gfns)
        self.owed_ns[vcpu] += len(gfns) * self.costs.pml_entry_ns

    def pending(self) -> np.ndarray:
        """Every GPA logged and not yet flushed (dirty, though no bitmap has it yet)."""
        cols = np.arange(PML_ENTITY_NUM)
        return self.buffers[cols < self.fill[:, None]]

    def take_owed(self) -> np.ndarray:
        """The vCPU time each vCPU has spent in PML exits and flushes since the last call."""
        owed = self.owed_ns.copy()
        self.owed_ns[:] = 0.0
        return owed
