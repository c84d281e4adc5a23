"""The KVM x86 MMU: sptes, shadow pages, rmap, and the operations on them.

State is kept in flat numpy arrays indexed by spte id (see layout.py) so
that every operation is vectorised over the sptes it touches. Operations that
change translations return whether a remote TLB flush is needed, as KVM's
helpers do; the caller flushes once.

Each protecting operation comes in KVM's two flavours: clear the W bit (the
next write faults) or, with PML, the D bit (the next write is logged by the
CPU, vmmodel/pml.py). Both kinds need the flush: a cached translation keeps
its W and its D until then.
"""

from __future__ import annotations

import numpy as np

from vmmodel.layout import SPTE_SHIFT, SPTES_PER_PAGE, Layout

LEVELS_ABOVE_LEAF = 2  # level-2 and level-3 parents; the roots are counted apart
# Non-zero bitmap words whose sptes tdp_clear_dirty_pt_masked looks at in one numpy step:
# 16 Ki words x 64 sptes of int64 ids is 8 MiB, whatever the guest's size.
MASKED_WORDS_AT_ONCE = 16_384


def unique_ids(ids: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """The distinct values of `ids`, in O(len) with a scatter instead of a sort.

    `scratch` is an int32 array covering every possible value; its content is
    irrelevant. Whichever duplicate the scatter keeps, exactly one matches.
    int32, not int64: the scatter is a cache miss per id, and half the bytes is
    half the misses' traffic (and 4 B per spte of host memory, not 8).
    """
    if len(ids) == 0:
        return ids
    if len(ids) > np.iinfo(scratch.dtype).max:
        return np.unique(ids)
    order = np.arange(len(ids), dtype=scratch.dtype)
    scratch[ids] = order
    return ids[scratch[ids] == order]


class Mmu:
    """Sptes and shadow pages of one VM, with the rmap kept consistent."""

    def __init__(self, layout: Layout, gfn_slot: np.ndarray, max_mmu_pages: int) -> None:
        self.layout = layout
        self.spte_gfn = layout.spte_gfn
        n, n_sp = layout.n_sptes, layout.n_shadow_pages
        self.spte_present = np.zeros(n, dtype=bool)
        self.spte_writable = np.zeros(n, dtype=bool)
        self.spte_dirty = np.zeros(n, dtype=bool)  # the D bit (shadow_dirty_mask)
        self.sp_valid = np.zeros(n_sp, dtype=bool)
        self.sp_created = np.zeros(n_sp, dtype=np.int64)  # creation order, for zapping the oldest
        self.sp_slot_mask = np.zeros(n_sp, dtype=np.uint8)  # KVM's sp->slot_bitmap
        self.parent_refs = [np.zeros((n_sp >> (SPTE_SHIFT * k)) + 1, dtype=np.int64)
                            for k in range(1, LEVELS_ABOVE_LEAF + 1)]
        self.gfn_slot = gfn_slot
        total_gfns = len(gfn_slot)
        # rmap: rmap_sptes[gfn, :rmap_len[gfn]] are the present sptes mapping gfn.
        self.rmap_sptes = np.full((total_gfns, layout.max_aliases), -1, dtype=np.int64)
        self.rmap_len = np.zeros(total_gfns, dtype=np.int64)
        self.max_mmu_pages = max_mmu_pages
        self.n_leaf_pages = 0
        self._seq = 0
        # For unique_ids over sptes, gfns or shadow pages (each fewer than the sptes):
        # shared by every caller, the Vm's included; its content never matters.
        self.scratch = np.zeros(n, dtype=np.int32)
        self._removed = np.zeros(n, dtype=bool)  # scratch for _rmap_remove: no alloc per zap

    # ---------------------------------------------------------------- counts

    @property
    def n_used_mmu_pages(self) -> int:
        """Shadow pages in use at every level, KVM's `kvm->arch.n_used_mmu_pages`."""
        if self.n_leaf_pages == 0:
            return 0
        upper = sum(int(np.count_nonzero(refs)) for refs in self.parent_refs)
        return self.n_leaf_pages + upper + self.layout.roots

    # ---------------------------------------------------------------- faults

    def fault_in(self, ids: np.ndarray, busy: np.ndarray | None = None) -> tuple[int, int]:
        """Instantiate writable sptes `ids` (unique, not present) for a write fault.

        Creates their shadow pages, zapping the oldest if that passes
        `max_mmu_pages`. Return (shadow pages created, shadow pages zapped);
        a zap needs a remote TLB flush, which the caller does.
        """
        sps = unique_ids(ids >> SPTE_SHIFT, self.scratch)
        new_sps = sps[~self.sp_valid[sps]]
        zapped = 0
        if len(new_sps):
            excess = self.n_used_mmu_pages + len(new_sps) - self.max_mmu_pages
            if excess > 0 and self.n_leaf_pages:
                spare = sps if busy is None else np.concatenate([sps, busy >> SPTE_SHIFT])
                zapped = self.zap_oldest_mmu_pages(excess, keep=spare)
            self._create_pages(new_sps)
        self.spte_present[ids] = True
        self.spte_writable[ids] = True
        self.spte_dirty[ids] = True  # make_spte sets D on a write fault
        gfns = self.spte_gfn[ids]
        self._rmap_add(gfns, ids)
        slot_bits = (np.uint8(1) << self.gfn_slot[gfns].astype(np.uint8))
        np.bitwise_or.at(self.sp_slot_mask, ids >> SPTE_SHIFT, slot_bits)
        return len(new_sps), zapped

    def _create_pages(self, sps: np.ndarray) -> None:
        self.sp_valid[sps] = True
        self.sp_created[sps] = self._seq + np.arange(len(sps))
        self._seq += len(sps)
        self.n_leaf_pages += len(sps)
        for k, refs in enumerate(self.parent_refs, start=1):
            np.add.at(refs, sps >> (SPTE_SHIFT * k), 1)

    def make_writable(self, ids: np.ndarray) -> None:
        """Fix a write-protect fault: the spte becomes writable again (and the retried write
        sets its D bit)."""
        self.spte_writable[ids] = True
        self.spte_dirty[ids] = True

    # ---------------------------------------------------------------- zap

    def zap_oldest_mmu_pages(self, count: int, keep: np.ndarray | None = None) -> int:
        """Zap the `count` oldest leaf shadow pages (KVM's kvm_mmu_zap_oldest_mmu_pages).

        Pages in `keep` (those a fault is filling right now) are spared.
        """
        candidates = self.sp_valid.copy()
        if keep is not None:
            candidates[keep] = False
        valid = np.flatnonzero(candidates)
        count = min(count, len(valid))
        if count <= 0:
            return 0
        oldest = valid[np.argpartition(self.sp_created[valid], count - 1)[:count]]
        self.zap_pages(oldest)
        return count

    def zap_pages(self, sps: np.ndarray) -> None:
        """Drop shadow pages `sps` and every spte in them from the rmap."""
        ids = (sps[:, None] * SPTES_PER_PAGE + np.arange(SPTES_PER_PAGE)).ravel()
        ids = ids[self.spte_present[ids]]
        self._rmap_remove(self.spte_gfn[ids], ids)
        self.spte_present[ids] = False
        self.spte_writable[ids] = False
        self.spte_dirty[ids] = False
        self.sp_valid[sps] = False
        self.sp_slot_mask[sps] = 0
        self.n_leaf_pages -= len(sps)
        for k, refs in enumerate(self.parent_refs, start=1):
            np.subtract.at(refs, sps >> (SPTE_SHIFT * k), 1)

    # ---------------------------------------------------------------- rmap

    def _rmap_add(self, gfns: np.ndarray, ids: np.ndarray) -> None:
        if self.layout.max_aliases == 1:
            self.rmap_sptes[gfns, 0] = ids
            self.rmap_len[gfns] = 1
            return
        order = np.argsort(gfns, kind="stable")
        g, s = gfns[order], ids[order]
        starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
        counts = np.diff(np.r_[starts, len(g)])
        rank = np.arange(len(g)) - np.repeat(starts, counts)
        self.rmap_sptes[g, self.rmap_len[g] + rank] = s
        self.rmap_len[g[starts]] += counts

    def _rmap_remove(self, gfns: np.ndarray, ids: np.ndarray) -> None:
        heads = unique_ids(gfns, self.scratch)
        rows = self.rmap_sptes[heads]
        removed = self._removed  # all False between calls: set here, cleared below
        removed[ids] = True
        keep = (rows >= 0) & ~removed[np.maximum(rows, 0)]
        removed[ids] = False
        # Compact each rmap head: kept entries first, in their order.
        order = np.argsort(~keep, axis=1, kind="stable")
        rows = np.take_along_axis(np.where(keep, rows, -1), order, axis=1)
        self.rmap_sptes[heads] = rows
        self.rmap_len[heads] = keep.sum(axis=1)

    def rmap_write_protect(self, gfns: np.ndarray) -> tuple[bool, int, int]:
        """Clear W on every spte that maps `gfns` (kvm_mmu_rmap_write_protect, vectorised).

        Return (flush needed, rmap entries followed, sptes whose W was cleared).
        """
        return self._rmap_clear(gfns, self.spte_writable)

    def rmap_clear_dirty(self, gfns: np.ndarray) -> tuple[bool, int, int]:
        """Clear D on every spte that maps `gfns` (__rmap_clear_dirty, for PML); as above."""
        return self._rmap_clear(gfns, self.spte_dirty)

    def _rmap_clear(self, gfns: np.ndarray, bits: np.ndarray) -> tuple[bool, int, int]:
        lens = self.rmap_len[gfns]
        if self.layout.max_aliases == 1:
            ids = self.rmap_sptes[gfns[lens > 0], 0]
        else:
            rows = self.rmap_sptes[gfns]
            ids = rows[np.arange(rows.shape[1]) < lens[:, None]]
        cleared = int(np.count_nonzero(bits[ids]))
        bits[ids] = False
        return cleared > 0, int(lens.sum()), cleared

    # ---------------------------------------------------------------- masked (per bitmap word)

    def tdp_clear_dirty_pt_masked(self, base_gfn: int, gfns: np.ndarray, *,
                                  wrprot: bool) -> tuple[int, int, int]:
        """kvm_tdp_mmu_clear_dirty_pt_masked for every non-zero word of a taken bitmap.

        `gfns` (sorted, inside one slot starting at `base_gfn`) are the bits taken;
        a word covers 64 gfns from the slot's start. Per word the TDP iterator visits
        the present leaf sptes from its first set bit to its last (clear_dirty_pt_masked
        stops once the mask is empty) and clears W (`wrprot`) or D on those of set bits.
        tdp only: spte id == gfn. Return (words, sptes visited, sptes cleared).
        """
        if len(gfns) == 0:
            return 0, 0, 0
        offsets = gfns - base_gfn
        words = offsets >> 6
        first = np.flatnonzero(np.r_[True, words[1:] != words[:-1]])
        last = np.r_[first[1:] - 1, len(words) - 1]
        lo, hi = offsets[first] & 63, offsets[last] & 63
        starts = base_gfn + (words[first] << 6)
        col = np.arange(64)
        visited = 0
        for i in range(0, len(first), MASKED_WORDS_AT_ONCE):  # bounded memory, not per word
            part = slice(i, i + MASKED_WORDS_AT_ONCE)
            # The sptes of each non-zero word, one row per word.
            ids = starts[part, None] + col
            in_span = (col >= lo[part, None]) & (col <= hi[part, None])
            in_span &= ids < len(self.spte_present)
            visited += int(np.count_nonzero(self.spte_present[np.where(in_span, ids, 0)]
                                            & in_span))
        bits = self.spte_writable if wrprot else self.spte_dirty
        cleared = int(np.count_nonzero(bits[gfns]))  # a bit is set only where present
        bits[gfns] = False
        return len(first), visited, cleared

    # ---------------------------------------------------------------- slot walk

    def slot_remove_write_access(self, slot_id: int) -> tuple[bool, int, int, int]:
        """Clear W on every leaf spte of every shadow page that maps into the slot.

        kvm_mmu_slot_remove_write_access: walk every shadow page in use, and
        for those whose slot_bitmap has the slot, all 512 sptes. Return
        (flush needed, shadow pages visited, sptes visited, sptes whose W was cleared).
        """
        return self._slot_clear(slot_id, self.spte_writable)

    def slot_leaf_clear_dirty(self, slot_id: int) -> tuple[bool, int, int, int]:
        """Clear D on every leaf spte into the slot (kvm_mmu_slot_leaf_clear_dirty, PML's
        enable-time walk); as above."""
        return self._slot_clear(slot_id, self.spte_dirty)

    def _slot_clear(self, slot_id: int, bits: np.ndarray) -> tuple[bool, int, int, int]:
        selected = self.sp_valid & ((self.sp_slot_mask >> slot_id) & 1).astype(bool)
        pages = bits.reshape(-1, SPTES_PER_PAGE)
        rows = np.flatnonzero(selected)
        cleared = int(np.count_nonzero(pages[rows]))
        pages[rows] = False
        return cleared > 0, self.n_used_mmu_pages, len(rows) * SPTES_PER_PAGE, cleared

    # ---------------------------------------------------------------- checks

    def check_consistency(self) -> list[str]:
        """Walk sptes and rmap both ways; return what disagrees (empty when sound)."""
        problems: list[str] = []
        present = np.flatnonzero(self.spte_present)
        if np.any(self.spte_writable & ~self.spte_present):
            problems.append("writable spte that is not present")
        if np.any(self.spte_dirty & ~self.spte_present):
            problems.append("dirty spte that is not present")
        cols = np.arange(self.rmap_sptes.shape[1])
        in_rmap = cols < self.rmap_len[:, None]
        entries = self.rmap_sptes[in_rmap]
        heads = np.broadcast_to(np.arange(len(self.rmap_len))[:, None], in_rmap.shape)[in_rmap]
        if np.any(entries < 0):
            problems.append("rmap entry with no spte")
            return problems
        if np.any(self.spte_gfn[entries] != heads):
            bad = heads[self.spte_gfn[entries] != heads][:5]
            problems.append(f"rmap of gfns {bad.tolist()} holds sptes mapping other gfns")
        if np.any(~self.spte_present[entries]):
            problems.append("rmap holds a spte that is not present")
        if len(np.unique(entries)) != len(entries):
            problems.append("a spte appears twice in the rmap")
        if len(entries) != len(present):
            missing = np.setdiff1d(present, entries)[:5]
            problems.append(f"present sptes missing from the rmap: {missing.tolist()}")
        sp_of_present = np.unique(present >> SPTE_SHIFT)
        if not np.array_equal(sp_of_present, np.flatnonzero(self.sp_valid)) and np.any(
            ~self.sp_valid[sp_of_present]
        ):
            problems.append("present spte in a shadow page that is not in use")
        if self.n_leaf_pages != int(np.count_nonzero(self.sp_valid)):
            problems.append("n_leaf_pages disagrees with the valid shadow pages")
        return problems
