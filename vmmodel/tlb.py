"""Per-vCPU TLBs of writable translations.

What matters for dirty logging is that a writable translation cached in a
TLB lets the vCPU keep writing after its spte was write-protected, without a
fault and so without `mark_page_dirty`, until `kvm_flush_remote_tlbs`. Each
vCPU keeps at most `entries` translations, replaced round-robin.
"""

from __future__ import annotations

import numpy as np


class Tlbs:
    def __init__(self, vcpus: int, n_sptes: int, entries: int) -> None:
        self.cached = np.zeros((vcpus, n_sptes), dtype=bool)
        self.ring = np.full((vcpus, entries), -1, dtype=np.int64)
        self.next = np.zeros(vcpus, dtype=np.int64)
        self.entries = entries

    def lookup(self, vcpu: int, ids: np.ndarray) -> np.ndarray:
        """Which writes through `ids` hit a cached writable translation."""
        return self.cached[vcpu, ids]

    def fill(self, vcpu: int, ids: np.ndarray) -> None:
        """Cache translations `ids` (unique, not cached), evicting the oldest entries."""
        ids = ids[-self.entries :]
        k = len(ids)
        if k == 0:
            return
        pos = (self.next[vcpu] + np.arange(k)) % self.entries
        evicted = self.ring[vcpu, pos]
        self.cached[vcpu, evicted[evicted >= 0]] = False
        self.ring[vcpu, pos] = ids
        self.cached[vcpu, ids] = True
        self.next[vcpu] = (self.next[vcpu] + k) % self.entries

    def flush_all(self) -> None:
        """kvm_flush_remote_tlbs: every vCPU drops every cached translation."""
        live = self.ring >= 0
        rows = np.broadcast_to(np.arange(self.ring.shape[0])[:, None], self.ring.shape)
        self.cached[rows[live], self.ring[live]] = False
        self.ring.fill(-1)
        self.next.fill(0)

    def stale_writable(self, spte_writable: np.ndarray) -> int:
        """Cached translations whose spte is no longer writable (for tests and reports)."""
        live = self.ring[self.ring >= 0]
        return int(np.count_nonzero(~spte_writable[live]))
