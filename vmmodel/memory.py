"""Guest memory: memslots with their dirty bitmaps, and the pages' bytes behind one interface.

A write stamps the page with its gfn and its write counter, so two versions
of a page always differ and a mismatch at the destination can be named. The
bytes are either kept, every slot's pages in one array indexed by global gfn
(`StoredMemory`), or generated on demand from the template each page took and
its stamp (`GeneratedMemory`): same bytes, 9 B per page instead of 4 KiB.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import NamedTuple

import numpy as np

from vmmodel.spec import MEMORY_BACKINGS, PAGE_SIZE

KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
WORDS_PER_PAGE = PAGE_SIZE // 8
BITS_PER_LONG = 64
READ_CHUNK_PAGES = 16_384  # 64 MiB of pages: what a whole-memory read holds at once
# `auto` generates a guest's pages from this size up (the default guest's): generated was
# measured faster at 1 and 8 GiB and holds 9 B per page. Below it the stored array costs at
# most 1 GiB of calloc'd memory, and a test (or a trace) may write any bytes into it.
AUTO_GENERATED_PAGES = 1 << 18  # 1 GiB
# A run of generated pages is copied from its pool in slices when that takes at most this
# many copies (a 256-page batch of the 64-page prefill pool: 5), else gathered: measured on
# the 2-core Intel Xeon, 35 vs 43 us for the batch.
COPY_CYCLES = 8


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


class Templates(NamedTuple):
    """What every page of a generated backing is made of, for a reader that need not see bytes.

    Page g is `pools[ids[g] - 1][g % len(that pool)]` (all zeros where
    `ids[g]` is 0), then, once written (its write counter c != 0), its u64
    words 0 and 1 replaced by (g, c). `migrate.digest` digests a whole guest
    from this in O(pages) instead of generating its bytes.
    """

    ids: np.ndarray  # uint8 per page: 0 the zero page, k the pool pools[k - 1]
    pools: tuple[np.ndarray, ...]  # (n, 4096) uint8 each


class GuestMemory(ABC):
    """How the host backs the guest's pages: one interface, two implementations.

    `write_count` is the ground truth the tests and the audit compare
    against: it moves on every slice in which the page is written. A page's
    bytes are a function of what the model knows (its template, its gfn and
    its count), so a backing may keep them (`StoredMemory`) or regenerate them
    when the migration reads them (`GeneratedMemory`): the bytes are the same.
    """

    kind = "abstract"

    def __init__(self, npages: int) -> None:
        self.write_count = np.zeros(npages, dtype=np.uint64)

    @property
    def npages(self) -> int:
        return self.write_count.shape[0]

    @property
    def array(self) -> np.ndarray | None:
        """The (npages, 4096) array of every page if the backing keeps one, else None.

        A reader with an array reads pages in place (no copy); else it asks `read`.
        """
        return None

    @property
    def templates(self) -> Templates | None:
        """Every page's template, if its bytes are its template plus its stamp, else None.

        None for a backing that may hold any bytes (`StoredMemory`): its reader
        must read them.
        """
        return None

    @property
    def pages(self) -> np.ndarray:
        """Every page's bytes as one (npages, 4096) array.

        The stored backing's own array; a generated one builds it whole, which
        costs 4 KiB per page: for tests and small guests, never a hot path. It
        is read-only, as a write into it would change nothing the guest holds.
        """
        out = np.empty((self.npages, PAGE_SIZE), dtype=np.uint8)
        for start in range(0, self.npages, READ_CHUNK_PAGES):
            stop = min(self.npages, start + READ_CHUNK_PAGES)
            self.read(np.arange(start, stop, dtype=np.int64), out[start:stop])
        out.flags.writeable = False
        return out

    @property
    @abstractmethod
    def nbytes(self) -> int:
        """Host bytes the backing's arrays hold (pages never touched in a calloc'd array too)."""
        ...

    @abstractmethod
    def stamp(self, gfns: np.ndarray) -> None:
        """Write each page of `gfns` once, however often it repeats: bump its counter and stamp
        gfn and counter (a fancy-indexed increment counts a repeated index once)."""
        ...

    @abstractmethod
    def fill(self, gfns: np.ndarray, pool: np.ndarray) -> None:
        """Give pages (unique) `pool[gfn % len(pool)]`, then stamp them, as a program would."""
        ...

    @abstractmethod
    def read(self, gfns: np.ndarray, out: np.ndarray) -> None:
        """Write the bytes of the pages `gfns` (valid) into `out`, (len(gfns), 4096) uint8."""
        ...

    @abstractmethod
    def zero_mask(self, gfns: np.ndarray) -> np.ndarray:
        """Return, for each of `gfns`, whether its page is all zeros (QEMU's zero page)."""
        ...


class StoredMemory(GuestMemory):
    """Every page's 4 KiB in one array indexed by global gfn: the simple backing.

    The migration gathers any set of pages from it with one `np.take`, or a
    memcpy for a run. It is what a trace of real page contents would need.
    """

    kind = "stored"

    def __init__(self, npages: int) -> None:
        super().__init__(npages)
        # np.zeros is calloc: untouched pages cost no host memory.
        self._pages = np.zeros((npages, PAGE_SIZE), dtype=np.uint8)
        self.words = self._pages.view(np.uint64).reshape(npages, WORDS_PER_PAGE)

    @property
    def array(self) -> np.ndarray:
        return self._pages

    @property
    def pages(self) -> np.ndarray:
        return self._pages

    @property
    def nbytes(self) -> int:
        return self._pages.nbytes + self.write_count.nbytes

    def stamp(self, gfns: np.ndarray) -> None:
        count = self.write_count[gfns] + 1
        self.write_count[gfns] = count
        # One scatter of both words: each page is a cache (and host TLB) miss, so touch it once.
        self.words[gfns, :2] = np.stack([gfns.astype(np.uint64), count], axis=1)

    def fill(self, gfns: np.ndarray, pool: np.ndarray) -> None:
        for start in range(0, len(gfns), READ_CHUNK_PAGES):  # bounded temporaries, not per page
            part = gfns[start : start + READ_CHUNK_PAGES]
            self._pages[part] = pool[part % len(pool)]
        self.stamp(gfns)

    def read(self, gfns: np.ndarray, out: np.ndarray) -> None:
        np.take(self._pages, gfns, axis=0, out=out)

    def zero_mask(self, gfns: np.ndarray) -> np.ndarray:
        words = self.words
        zero = words[gfns, 0] == 0  # a page whose first word is set is not zero: one read
        if zero.any():
            zero[zero] = np.bitwise_or.reduce(words[gfns[zero]], axis=1) == 0
        return zero


class GeneratedMemory(GuestMemory):
    """No page bytes at all: a page is its template plus its stamp, generated when read.

    Per page it keeps the write counter (8 B) and a template id (1 B: 0 is
    the zero page, k is the k-th pool `fill` was given); the pools themselves
    are a few hundred KiB. `read` rebuilds exactly the bytes `StoredMemory`
    would hold: `pool[gfn % len(pool)]` (or zeros), then (gfn, count) in the
    first two u64 words if the page was ever written.
    """

    kind = "generated"
    MAX_POOLS = 255  # template ids are a uint8, 0 being the zero page

    def __init__(self, npages: int) -> None:
        super().__init__(npages)
        self.template = np.zeros(npages, dtype=np.uint8)
        self.pools: list[np.ndarray] = []

    @property
    def templates(self) -> Templates:
        return Templates(self.template, tuple(self.pools))

    @property
    def nbytes(self) -> int:
        pools = sum(p.nbytes for p in self.pools)
        return self.write_count.nbytes + self.template.nbytes + pools

    def _pool_id(self, pool: np.ndarray) -> int:
        """The template id of `pool`, registered on first use (a pool is an immutable copy)."""
        for i, known in enumerate(self.pools):
            if known is pool or (known.shape == pool.shape and np.array_equal(known, pool)):
                return i + 1
        if len(self.pools) >= self.MAX_POOLS:
            raise ValueError(f"more than {self.MAX_POOLS} template pools")
        if pool.ndim != 2 or pool.shape[1] != PAGE_SIZE or pool.dtype != np.uint8 or not len(pool):
            raise ValueError(f"a pool must be (n, {PAGE_SIZE}) uint8, got {pool.shape}")
        self.pools.append(pool.copy())
        return len(self.pools)

    def stamp(self, gfns: np.ndarray) -> None:
        self.write_count[gfns] += 1

    def fill(self, gfns: np.ndarray, pool: np.ndarray) -> None:
        self.template[gfns] = self._pool_id(pool)
        self.stamp(gfns)

    def read(self, gfns: np.ndarray, out: np.ndarray) -> None:
        rows = _as_run(gfns)  # a run (a first pass) reads the per-page arrays in place
        template = self.template[rows]
        ids = np.unique(template) if len(self.pools) > 1 else None
        if ids is None and (len(self.pools) == 0 or not template.any()):
            out[:] = 0
        elif ids is None and template.all():  # one pool, every page from it
            pool = self.pools[0]
            if isinstance(rows, slice) and len(out) <= COPY_CYCLES * len(pool):
                _copy_cycle(pool, rows.start, out)
            else:
                np.take(pool, gfns % len(pool), axis=0, out=out, mode="clip")  # in range
        else:
            for tid in (ids if ids is not None else (0, 1)):  # a few pools, not per page
                sel = template == tid
                if not tid:
                    out[sel] = 0
                else:
                    pool = self.pools[tid - 1]
                    out[sel] = pool[gfns[sel] % len(pool)]
        count = self.write_count[rows]
        words = out.view(np.uint64)
        written = count != 0
        if written.all():
            words[:, 0] = gfns
            words[:, 1] = count
        elif written.any():
            words[written, 0] = gfns[written]
            words[written, 1] = count[written]

    def zero_mask(self, gfns: np.ndarray) -> np.ndarray:
        # A written page carries its stamp, (gfn, count >= 1): never zero; `fill` stamps,
        # so a page never written still has the zero template.
        return (self.write_count[gfns] == 0) & (self.template[gfns] == 0)


def _as_run(gfns: np.ndarray) -> slice | np.ndarray:
    """*gfns* as a slice if they are consecutive and ascending (a view, not a gather), else
    themselves."""
    n = len(gfns)
    if not n or int(gfns[-1]) - int(gfns[0]) != n - 1 or not (gfns[1:] > gfns[:-1]).all():
        return gfns
    return slice(int(gfns[0]), int(gfns[0]) + n)


def _copy_cycle(pool: np.ndarray, first: int, out: np.ndarray) -> None:
    """`out[i] = pool[(first + i) % len(pool)]`, as a few slice copies (memcpy, no gather)."""
    done, row = 0, first % len(pool)
    while done < len(out):  # len(out) / len(pool) + 1 copies, at most COPY_CYCLES + 1
        step = min(len(pool) - row, len(out) - done)
        out[done : done + step] = pool[row : row + step]
        done, row = done + step, 0


def make_memory(backing: str, npages: int) -> GuestMemory:
    """Return the backing for `npages` pages: `stored`, `generated`, or `auto` by size.

    Raise `ValueError` for an unknown backing.
    """
    if backing == "auto":
        backing = "generated" if npages >= AUTO_GENERATED_PAGES else "stored"
    if backing == "stored":
        return StoredMemory(npages)
    if backing == "generated":
        return GeneratedMemory(npages)
    raise ValueError(f"memory backing {backing!r} is not one of {', '.join(MEMORY_BACKINGS)}")
