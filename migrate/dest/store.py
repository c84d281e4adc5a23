"""What the destination keeps of a guest's pages: their bytes, or one digest each.

Verification only ever compares per-page digests (`migrate.digest`) with the
source's PAGE_DIGESTS at pause, so the destination need not hold the image to
verify: `DigestStore` digests each batch's pages as they arrive and keeps 12
bytes per page (the u64 digest and the u32 pass it came from) where
`ImageStore` keeps 4 KiB. Both start as an all-zero guest (a page never
received digests as a zero page, as QEMU's destination RAM starts zeroed),
so both verify the same pages as lost.

The receiver decides which pages of a batch are stored (the newer-pass
filter); a store only stores them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Literal

import numpy as np

from migrate import wire
from migrate.digest import page_digests

StoreName = Literal["image", "digests"]
STORES: tuple[str, ...] = ("image", "digests", "auto")
# `auto` keeps digests from this size up (the default guest's, as the source generates its
# pages from 1 GiB up). Measured on the 2-core Intel Xeon, default scenario: the image's first
# touch of 1 GiB costs 0.3-3.4 s of page faults in this VM (its freed memory goes back to the
# host), then verifying it 0.5 s at COMPLETE, one side waiting for the other; digesting each
# batch on arrival costs ~0.4 s, overlapped with the source's work, and holds 3 MiB.
AUTO_DIGESTS_PAGES = 1 << 18
ZERO_DIGEST = np.uint64(page_digests(np.zeros((1, wire.PAGE_SIZE), dtype=np.uint8))[0])


class PageStore(ABC):
    """A guest's pages at the destination, and the pass each one's content came from."""

    name: ClassVar[StoreName]
    bytes_per_page: ClassVar[int]  # what --max-memory bounds

    def __init__(self, npages: int) -> None:
        self.npages = npages
        self.page_pass = np.zeros(npages, dtype=np.uint32)  # 0: never received

    @classmethod
    def held_bytes(cls, npages: int) -> int:
        """What a guest of *npages* costs this store (its per-page arrays)."""
        return npages * cls.bytes_per_page

    @abstractmethod
    def put(self, gfns: np.ndarray, content: np.ndarray, pass_no: int) -> None:
        """Store NORMAL pages *content* (one 4 KiB row per gfn) of pass *pass_no*."""
        ...

    @abstractmethod
    def put_zero(self, gfns: np.ndarray, pass_no: int) -> None:
        """Store ZERO pages of pass *pass_no*."""
        ...

    @abstractmethod
    def digests(self) -> np.ndarray:
        """One digest per page, as the source's PAGE_DIGESTS computes them."""
        ...


class ImageStore(PageStore):
    """The bytes received: 4 KiB per page, digested at COMPLETE."""

    name = "image"
    bytes_per_page = wire.PAGE_SIZE

    def __init__(self, npages: int) -> None:
        super().__init__(npages)
        self.memory = np.zeros((npages, wire.PAGE_SIZE), dtype=np.uint8)
        self.zero = np.ones(npages, dtype=bool)  # known to hold zeros (never received, or ZERO)

    def put(self, gfns: np.ndarray, content: np.ndarray, pass_no: int) -> None:
        _store(self.memory, gfns, content)
        self.page_pass[gfns] = pass_no
        self.zero[gfns] = False

    def put_zero(self, gfns: np.ndarray, pass_no: int) -> None:
        """A ZERO page is written only if the page may hold something else."""
        stale = gfns[~self.zero[gfns]]
        if len(stale):
            self.memory[stale] = 0
        self.page_pass[gfns] = pass_no
        self.zero[gfns] = True

    def digests(self) -> np.ndarray:
        """Digest the pages that may hold something; the others are zero pages."""
        out = np.full(self.npages, ZERO_DIGEST, dtype=np.uint64)
        held = np.flatnonzero(~self.zero)
        out[held] = page_digests(self.memory, held)
        return out


class DigestStore(PageStore):
    """One u64 digest per page, computed from each batch as it arrives: 12 bytes per page."""

    name = "digests"
    bytes_per_page = 8 + 4  # the digest, the pass

    def __init__(self, npages: int) -> None:
        super().__init__(npages)
        self._digests = np.full(npages, ZERO_DIGEST, dtype=np.uint64)

    def put(self, gfns: np.ndarray, content: np.ndarray, pass_no: int) -> None:
        if len(gfns):
            self._digests[gfns] = page_digests(content)
        self.page_pass[gfns] = pass_no

    def put_zero(self, gfns: np.ndarray, pass_no: int) -> None:
        self._digests[gfns] = ZERO_DIGEST
        self.page_pass[gfns] = pass_no

    def digests(self) -> np.ndarray:
        return self._digests


STORE_TYPES: dict[str, type[PageStore]] = {"image": ImageStore, "digests": DigestStore}


def choose(store: str, npages: int, max_bytes: int) -> type[PageStore] | None:
    """The store for a guest of *npages* under a --max-memory of *max_bytes*, or None if none fits.

    `auto` is the image for a guest under `AUTO_DIGESTS_PAGES` while it fits,
    else the digests.
    """
    if store not in STORES:
        raise ValueError(f"unknown store {store!r} (expected one of {', '.join(STORES)})")
    if store == "auto":
        candidates = [ImageStore, DigestStore] if npages < AUTO_DIGESTS_PAGES else [DigestStore]
    else:
        candidates = [STORE_TYPES[store]]
    return next((c for c in candidates if c.held_bytes(npages) <= max_bytes), None)


def _store(memory: np.ndarray, gfns: np.ndarray, content: np.ndarray) -> None:
    """``memory[gfns] = content``; one memcpy when *gfns* are a run (a first pass)."""
    if not len(gfns):
        return
    first = wire.run_start(gfns)
    if first is not None:
        memory[first : first + len(gfns)] = content
    else:
        memory[gfns] = content
