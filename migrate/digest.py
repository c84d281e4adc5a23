"""Per-page digests: how the destination's memory is checked against the source's.

A run is only correct if every page at resume equals the source's page at
pause, so both sides digest all of memory and compare. ``page_digests`` hashes
4 KiB pages in numpy, no Python loop per page (~1.25 M pages/s, 5 GB/s, on
the 2-core AMD dev machine, ~0.6 M pages/s on the 2-core Intel Xeon; no extra
dependency). It is not cryptographic: it catches lost writes, not an adversary.
A generated guest is digested without generating its pages
(``template_digests``: the digest is a sum of per-word terms, so a stamped
template's is its template's corrected for two words): on the 2-core Intel
Xeon 4 GiB in 20 ms where generating and hashing its bytes took 3.3 s, 64 GiB
in ~0.35 s.

The per-page digest is ``sum_i f32(K2[i] * f29(K1[i] * w[i]))`` over the
page's 512 little-endian u64 words ``w``, mod 2**64, with
``fS(x) = x ^ (x >> S)`` and K1, K2 tables of odd constants from a fixed seed,
followed by a final mix. Every step applied to a word is a bijection, so pages
differing in exactly one word (any single-byte change, such as a gfn stamp or
a version counter) always get different digests. The position-dependent
constants make swapped words differ. The xor-shifts around the second multiply
matter: without them a change confined to a word's top bits stays a multiple
of 2**34 and such changes in four words cancel in the sum (seen in testing).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from vmmodel import PAGE_SIZE, GuestMemory

_WORDS = PAGE_SIZE // 8
# Two (32, 512) u64 temporaries, 256 KiB: fit L2. Measured on the 2-core Intel Xeon: 0.62 M
# random pages/s at 32, 0.60 at 64, 0.43 at 256, 0.39 at 1024 (the former chunk).
_CHUNK_PAGES = 32
READ_CHUNK_PAGES = 16_384  # a backing with neither array nor templates is read 64 MiB at a time
TEMPLATE_CHUNK_PAGES = 1 << 16  # template_digests: u64 temporaries of 512 KiB, fit L2
_SEED = 0x70726563_6F707921  # "precopy!"

_rng = np.random.default_rng(_SEED)
_K1 = _rng.integers(0, 2**64, _WORDS, dtype=np.uint64, endpoint=False) | np.uint64(1)
_K2 = _rng.integers(0, 2**64, _WORDS, dtype=np.uint64, endpoint=False) | np.uint64(1)
del _rng
_SHIFT = np.uint64(29)
_FINAL_MUL = np.uint64(0xBF58476D1CE4E5B9)  # splitmix64's first multiplier
_OFFSET = np.uint64(0x9E3779B97F4A7C15)  # golden-ratio constant, as in splitmix64
_S31 = np.uint64(31)
_S32 = np.uint64(32)
_ZERO = np.uint64(0)


def _check_pages(pages: np.ndarray) -> None:
    if pages.ndim != 2 or pages.shape[1] != PAGE_SIZE or pages.dtype != np.uint8:
        raise ValueError(f"pages must be (n, {PAGE_SIZE}) uint8, got {pages.dtype} {pages.shape}")


def _page_sums(pages: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """The per-word terms of each row of *pages* (or of `pages[rows]`) summed mod 2**64:
    the digest before its mix."""
    n = pages.shape[0] if rows is None else rows.shape[0]
    out = np.empty(n, dtype=np.uint64)
    m = min(n, _CHUNK_PAGES)
    x = np.empty((m, _WORDS), dtype=np.uint64)
    t = np.empty((m, _WORDS), dtype=np.uint64)
    for start in range(0, n, _CHUNK_PAGES):
        stop = min(n, start + _CHUNK_PAGES)
        # A copy only of a strided view or of rows gathered (a chunk: cache-resident).
        words = np.ascontiguousarray(_rows(pages, rows, start, stop)).view("<u8")
        xv, tv = x[: stop - start], t[: stop - start]
        np.multiply(words, _K1, out=xv)
        np.right_shift(xv, _SHIFT, out=tv)
        np.bitwise_xor(xv, tv, out=xv)
        np.multiply(xv, _K2, out=xv)
        np.right_shift(xv, _S32, out=tv)
        np.bitwise_xor(xv, tv, out=xv)
        np.add.reduce(xv, axis=1, out=out[start:stop])
    return out


def _rows(pages: np.ndarray, rows: np.ndarray | None, start: int, stop: int) -> np.ndarray:
    """Rows start..stop of *pages*, or of `pages[rows]`: a view where they are a run."""
    if rows is None:
        return pages[start:stop]
    first, last = int(rows[start]), int(rows[stop - 1])
    if last - first == stop - start - 1:  # strictly ascending, as many as their span: a run
        return pages[first : last + 1]
    return pages[rows[start:stop]]


def _word_terms(position: int, words: np.ndarray) -> np.ndarray:
    """The term each of *words* (u64) adds to a page's sum when it is the page's word *position*."""
    x = words * _K1[position]
    x ^= x >> _SHIFT
    x *= _K2[position]
    x ^= x >> _S32
    return x


def _mix(sums: np.ndarray) -> np.ndarray:
    """The final mix, in place: every output bit depends on the whole sum (the sum's low
    bits don't); the offset keeps the all-zero page from digesting to 0, the value of unset
    arrays."""
    sums += _OFFSET
    sums ^= sums >> _S31
    sums *= _FINAL_MUL
    sums ^= sums >> _S32
    return sums


def page_digests(pages: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Return one uint64 digest per row of *pages*, an (n, 4096) uint8 array, or per row
    `pages[rows]` for strictly ascending *rows* (read in place where they are runs, else
    gathered a chunk at a time, never whole).

    Works in chunks so the temporaries stay bounded (a few hundred KiB) whatever n is.
    Raise ``ValueError`` if *pages* is not (n, 4096) uint8 or *rows* are not ascending
    row numbers of *pages*.
    """
    _check_pages(pages)
    if rows is not None:
        rows = np.asarray(rows)
        if rows.ndim != 1 or rows.dtype.kind not in "iu" or (
                len(rows) and (rows[0] < 0 or rows[-1] >= len(pages)
                               or not (np.diff(rows) > 0).all())):
            raise ValueError(f"rows must be strictly ascending row numbers of {len(pages)} pages")
    return _mix(_page_sums(pages, rows))


def memory_digests(memory: GuestMemory) -> np.ndarray:
    """Return the digest of every page of guest *memory*, through its backing.

    A stored backing is digested in place. A generated one is never generated:
    its pages' digests follow from their templates (`template_digests`). Any
    other backing is read `READ_CHUNK_PAGES` at a time, so its pages are never
    all in host memory.
    """
    if memory.array is not None:
        return page_digests(memory.array)
    templates = memory.templates
    if templates is not None:
        return template_digests(templates.ids, templates.pools, memory.write_count)
    n = memory.npages
    out = np.empty(n, dtype=np.uint64)
    buf = np.empty((min(n, READ_CHUNK_PAGES), PAGE_SIZE), dtype=np.uint8)
    for start in range(0, n, READ_CHUNK_PAGES):
        stop = min(n, start + READ_CHUNK_PAGES)
        part = buf[: stop - start]
        memory.read(np.arange(start, stop, dtype=np.int64), part)
        out[start:stop] = page_digests(part)
    return out


def template_digests(ids: np.ndarray, pools: Sequence[np.ndarray],
                     write_count: np.ndarray) -> np.ndarray:
    """Return the digest of every page g of a generated memory without generating one page.

    Page g is its template, `pools[ids[g] - 1][g % len(pool)]` or zeros for id
    0, with u64 words 0 and 1 replaced by (g, write_count[g]) once written
    (`vmmodel.memory.Templates`). A digest is the mix of a sum of per-word
    terms, so the written page's sum is the template's, less the terms of
    its words 0 and 1, plus those of g and the count: the templates' sums are
    computed once (a few hundred pages), then each page costs a few u64
    operations, `TEMPLATE_CHUNK_PAGES` at a time (bounded temporaries).
    Raise ``ValueError`` for arrays of different lengths or a pool that is not
    (n, 4096) uint8.
    """
    n = ids.shape[0]
    if write_count.shape != (n,):
        raise ValueError(f"{n} template ids but {write_count.shape} write counters")
    # Table row 0 is the zero page (every term of a zero word is 0); pool k's pages follow.
    full, stamped, offset, length = [np.zeros(1, np.uint64)], [np.zeros(1, np.uint64)], [0], [1]
    for pool in pools:
        _check_pages(pool)
        if not len(pool):
            raise ValueError("an empty template pool")
        sums = _page_sums(pool)
        words = pool.view("<u8")
        offset.append(offset[-1] + length[-1])
        length.append(len(pool))
        full.append(sums)
        stamped.append(sums - _word_terms(0, words[:, 0]) - _word_terms(1, words[:, 1]))
    if len(pools) == 1:  # the usual (one prefill pool): its rows repeat along the gfns
        cycle = np.arange(TEMPLATE_CHUNK_PAGES + length[1]) % length[1]
        stamped_seq, full_seq = stamped[1][cycle], full[1][cycle]  # views, not gathers, below
    else:
        stamped_t, full_t = np.concatenate(stamped), np.concatenate(full)
        offsets, lengths = np.array(offset, np.int64), np.array(length, np.int64)

    def template_sums(start: int, stop: int, tid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pages start..stop's template sums: without words 0 and 1, and whole."""
        if len(pools) == 1:
            first = start % length[1]
            pooled = tid != 0
            return (np.where(pooled, stamped_seq[first : first + stop - start], _ZERO),
                    np.where(pooled, full_seq[first : first + stop - start], _ZERO))
        row = np.arange(start, stop, dtype=np.int64) % lengths[tid]
        row += offsets[tid]
        return stamped_t[row], full_t[row]

    out = np.empty(n, dtype=np.uint64)
    for start in range(0, n, TEMPLATE_CHUNK_PAGES):
        stop = min(n, start + TEMPLATE_CHUNK_PAGES)
        count = write_count[start:stop]
        sums, whole = template_sums(start, stop, ids[start:stop])
        sums += _word_terms(0, np.arange(start, stop, dtype=np.uint64))
        sums += _word_terms(1, count)
        never = count == 0
        if never.any():  # a page never written is its template, word for word
            sums[never] = whole[never]
        out[start:stop] = sums
    return _mix(out)


def memory_digest(digests: np.ndarray) -> str:
    """Return a hex string summarising a whole memory's per-page digests, order included."""
    data = np.ascontiguousarray(digests, dtype="<u8")
    return hashlib.blake2b(data.tobytes(), digest_size=16).hexdigest()


def diff_pages(a_digests: np.ndarray, b_digests: np.ndarray) -> np.ndarray:
    """Return the indices (gfns, for whole-memory digests) at which two digest arrays differ.

    Raise ``ValueError`` if the arrays have different lengths: memories of
    different sizes cannot be compared page for page.
    """
    a = np.asarray(a_digests)
    b = np.asarray(b_digests)
    if a.shape != b.shape:
        raise ValueError(f"digest arrays differ in shape: {a.shape} vs {b.shape}")
    return np.flatnonzero(a != b)
