"""QEMU's migration bitmap (`rb->bmap`): the pages still to send, and the scan over them.

A bitmap sync ORs KVM's dirty log into it (`cpu_physical_memory_sync_dirty_bitmap`);
only pages not already set count as newly dirty, so a page dirtied again before
it was sent adds nothing to `migration_dirty_pages`' growth or to the dirty
rate. Sending walks it from where the last send stopped, in gfn order, and
wraps at the end of memory (`find_dirty_block`: `complete_round`); it gives up
once it has come round to where it started without finding a set bit.
"""

from __future__ import annotations

import numpy as np

# How far one look ahead scans at first; it doubles while it finds too little, so a
# sparse bitmap costs a few large scans and a dense one a small scan per take.
FIRST_LOOK = 4096


class MigrationBitmap:
    """One bit per guest page, set while the page still has to be sent."""

    def __init__(self, npages: int) -> None:
        # QEMU's ram_list_init_bitmaps: every page starts dirty (the first pass sends all).
        self.bits = np.ones(npages, dtype=bool)
        self.dirty_pages = npages  # QEMU's migration_dirty_pages
        self.cursor = 0  # the next gfn the scan looks at (pss->page)
        self.complete_rounds = 0  # times the scan wrapped past the end of memory

    @property
    def npages(self) -> int:
        return len(self.bits)

    def sync(self, gfns: np.ndarray) -> int:
        """Set the pages KVM logged dirty; return how many were not set already.

        `gfns` holds each page once (a harvest's result).
        """
        if len(gfns) == 0:
            return 0
        new = int(np.count_nonzero(~self.bits[gfns]))
        self.bits[gfns] = True
        self.dirty_pages += new
        return new

    def peek(self, limit: int) -> np.ndarray:
        """Up to `limit` dirty gfns from the cursor on, in gfn order (`find_dirty_block`).

        Stops at the end of memory (the next look wraps), so a batch never spans the
        wrap. An empty result: no page is dirty anywhere. Nothing is cleared.
        """
        if self.dirty_pages == 0 or limit <= 0:
            return np.empty(0, dtype=np.int64)
        for _ in range(2):  # from the cursor to the end; if nothing there, wrap once
            if self.cursor >= self.npages:
                self.cursor = 0
                self.complete_rounds += 1
            start, look = self.cursor, FIRST_LOOK
            while True:
                end = min(start + look, self.npages)
                found = np.flatnonzero(self.bits[start:end])
                if len(found) >= limit or end == self.npages:
                    break
                look *= 2
            if len(found):
                return (found[:limit] + start).astype(np.int64, copy=False)
            self.cursor = self.npages
        raise AssertionError("dirty_pages counts pages the bitmap does not hold")

    def clear(self, gfns: np.ndarray) -> None:
        """The pages `gfns` (from `peek`) are being sent: clear them; the scan goes on after."""
        if len(gfns) == 0:
            return
        self.bits[gfns] = False
        self.dirty_pages -= len(gfns)
        self.cursor = int(gfns[-1]) + 1

    def remaining_bytes(self, page_size: int) -> int:
        """QEMU's ram_bytes_remaining(): what `remaining` in query-migrate says."""
        return self.dirty_pages * page_size
