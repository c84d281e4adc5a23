"""Guest memory: memslots with their dirty bitmaps, and the pages' real bytes.

Every slot's pages live in one array indexed by global gfn, so the migration
can gather any set of pages with one `np.take`. A write stamps the page with
its gfn and its write counter, so two versions of a page always differ and a
mismatch at the destination can be named.
"""

from __future__ import annotations

import numpy as np

from vmmodel.spec import PAGE_SIZE

KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
WORDS_PER_PAGE = PAGE_SIZE // 8
BITS_PER_LONG = 64


class MemSlot:
    """A `kvm_memory_slot`: gfns [base_gfn, base_gfn + npages) and their dirty bitmap.

    The bitmap is a bool per page (KVM packs bits; the cost model charges per
    64-bit word, `bitmap_words`).
    """

    def __init__(self, slot_id: int, name: str, base_gfn: int, npages: int) -> None:
        self.id = slot_id
        self.name = name
        self.base_gfn = base_gfn
        self.npages = npages
        self.flags = 0
        self.dirty_bitmap = np.zeros(npages, dtype=bool)

    @property
    def end_gfn(self) -> int:
        return self.base_gfn + self.npages

    @property
    def bitmap_words(self) -> int:
        return -(-self.npages // BITS_PER_LONG)

    @property
    def is_dirty_logging(self) -> bool:
        return bool(self.flags & KVM_MEM_LOG_DIRTY_PAGES)

    @property
    def nr_dirty_pages(self) -> int:
        return int(np.count_nonzero(self.dirty_bitmap))

    def contains(self, gfns: np.ndarray) -> np.ndarray:
        return (gfns >= self.base_gfn) & (gfns < self.end_gfn)

    def mark_page_dirty(self, gfns: np.ndarray) -> None:
        """Set the dirty bits of `gfns` (global, all inside this slot) if logging is on."""
        if self.is_dirty_logging:
            self.dirty_bitmap[gfns - self.base_gfn] = True

    def take_dirty_bitmap(self) -> np.ndarray:
        """Copy out and clear the bitmap, as KVM_GET_DIRTY_LOG does; return the global gfns."""
        offsets = np.flatnonzero(self.dirty_bitmap)
        self.dirty_bitmap[offsets] = False
        return offsets + self.base_gfn

    def __repr__(self) -> str:
        return f"MemSlot(id={self.id}, {self.name}, base_gfn={self.base_gfn}, npages={self.npages})"


class GuestMemory:
    """The bytes of every guest page, and how often each page has been written.

    `write_count` is the ground truth the tests and the audit compare
    against: it moves on every slice in which the page is written.
    """

    def __init__(self, npages: int) -> None:
        # np.zeros is calloc: untouched pages cost no host memory.
        self.pages = np.zeros((npages, PAGE_SIZE), dtype=np.uint8)
        self.words = self.pages.view(np.uint64).reshape(npages, WORDS_PER_PAGE)
        self.write_count = np.zeros(npages, dtype=np.uint64)

    @property
    def npages(self) -> int:
        return self.pages.shape[0]

    def stamp(self, gfns: np.ndarray) -> None:
        """Write each page of `gfns` (unique): bump its counter and stamp gfn and counter."""
        count = self.write_count[gfns] + 1
        self.write_count[gfns] = count
        # One scatter of both words: each page is a cache (and host TLB) miss, so touch it once.
        self.words[gfns, :2] = np.stack([gfns.astype(np.uint64), count], axis=1)

    def fill(self, gfns: np.ndarray, pool: np.ndarray) -> None:
        """Give pages content from a pool of template pages, as a program filling memory."""
        chunk = 16_384
        for start in range(0, len(gfns), chunk):  # bounded temporaries, not per page
            part = gfns[start : start + chunk]
            self.pages[part] = pool[part % len(pool)]
        self.stamp(gfns)
