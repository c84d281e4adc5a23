"""A generated guest's digests, computed from its templates, equal the digests of its bytes.

`memory_digests` never generates a page of a `GeneratedMemory`: it sums each
template's per-word terms once and corrects words 0 and 1 for the stamp. Each
test compares with `page_digests` of the bytes `read` generates (the stored
backing's path), so a wrong correction, table row or chunk edge fails.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import migrate.digest as digest
from migrate.digest import memory_digests, page_digests, template_digests
from vmmodel import PAGE_SIZE
from vmmodel.content import text_pool
from vmmodel.memory import GeneratedMemory, StoredMemory

NPAGES = 2000


def _bytes_digests(memory: GeneratedMemory) -> np.ndarray:
    """The digests of the pages' bytes, as `read` generates them."""
    return page_digests(memory.pages)


def _random_pool(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, PAGE_SIZE), dtype=np.uint8)


def test_zero_and_written_zero_template_pages():
    memory = GeneratedMemory(NPAGES)  # no pool at all: every page the zero template
    memory.stamp(np.arange(0, NPAGES, 3))
    memory.stamp(np.arange(0, NPAGES, 6))  # some written twice
    got = memory_digests(memory)
    np.testing.assert_array_equal(got, _bytes_digests(memory))
    assert got[1] == page_digests(np.zeros((1, PAGE_SIZE), np.uint8))[0]  # never written: zero
    assert len(np.unique(got[::3])) == len(got[::3])  # each stamp its own digest


@pytest.mark.parametrize("pool_pages", [1, 7, 64, 333])
def test_one_pool_of_any_length(pool_pages):
    """One pool is the fast path (its rows repeat along the gfns): any length, any chunk edge."""
    memory = GeneratedMemory(NPAGES)
    memory.fill(np.arange(5, NPAGES - 100, 2), text_pool(np.random.default_rng(1))[:pool_pages]
                if pool_pages <= 64 else _random_pool(1, pool_pages))
    memory.stamp(np.arange(0, NPAGES, 5))
    np.testing.assert_array_equal(memory_digests(memory), _bytes_digests(memory))


def test_many_pools_of_different_lengths():
    memory = GeneratedMemory(NPAGES)
    rng = np.random.default_rng(2)
    for k in range(40):
        gfns = np.flatnonzero(rng.random(NPAGES) < 0.05)
        memory.fill(gfns, _random_pool(k, 1 + k % 9))
    memory.stamp(np.flatnonzero(rng.random(NPAGES) < 0.3))
    assert len(memory.pools) == 40
    np.testing.assert_array_equal(memory_digests(memory), _bytes_digests(memory))


def test_counts_past_two_to_the_32():
    memory = GeneratedMemory(64)
    memory.fill(np.arange(0, 64, 2), _random_pool(4, 3))
    memory.write_count[:] = np.uint64(2**32 - 2) + np.arange(64, dtype=np.uint64) * np.uint64(3)
    memory.write_count[7] = np.uint64(2**64 - 1)
    memory.stamp(np.arange(0, 64, 4))  # page 7 (not stamped) keeps the largest count
    np.testing.assert_array_equal(memory_digests(memory), _bytes_digests(memory))


def test_a_page_never_written_is_its_template_word_for_word():
    """Only `fill` gives a template, and it stamps; a template page with count 0 still digests
    as its template (words 0 and 1 not replaced)."""
    memory = GeneratedMemory(300)
    pool = _random_pool(5, 10)
    memory.fill(np.arange(300), pool)
    memory.write_count[::2] = 0
    np.testing.assert_array_equal(memory_digests(memory), _bytes_digests(memory))
    templates = pool[np.arange(0, 300, 2) % 10]
    np.testing.assert_array_equal(memory_digests(memory)[::2], page_digests(templates))


@pytest.mark.parametrize("pools", [1, 3])
def test_chunk_edges(monkeypatch, pools):
    """Chunks that no pool length divides: every chunk starts mid-cycle."""
    monkeypatch.setattr(digest, "TEMPLATE_CHUNK_PAGES", 97)
    memory = GeneratedMemory(NPAGES)
    for k in range(pools):
        memory.fill(np.arange(k, NPAGES, pools + 1), _random_pool(10 + k, 13 + k))
    memory.stamp(np.arange(0, NPAGES, 7))
    np.testing.assert_array_equal(memory_digests(memory), _bytes_digests(memory))


def test_no_page_is_generated(monkeypatch):
    memory = GeneratedMemory(NPAGES)
    memory.fill(np.arange(NPAGES), _random_pool(6, 5))

    def refuse(gfns, out):
        raise AssertionError("a page was generated")

    monkeypatch.setattr(memory, "read", refuse)
    assert memory_digests(memory).shape == (NPAGES,)


def test_bad_tables_are_refused():
    with pytest.raises(ValueError, match="write counters"):
        template_digests(np.zeros(4, np.uint8), (), np.zeros(3, np.uint64))
    with pytest.raises(ValueError, match="pages must be"):
        template_digests(np.zeros(4, np.uint8), (np.zeros((2, 100), np.uint8),),
                         np.zeros(4, np.uint64))
    with pytest.raises(ValueError, match="empty template pool"):
        template_digests(np.zeros(4, np.uint8), (np.zeros((0, PAGE_SIZE), np.uint8),),
                         np.zeros(4, np.uint64))


_POOLS = [_random_pool(20, 3), text_pool(np.random.default_rng(21)), _random_pool(22, 1),
          np.zeros((4, PAGE_SIZE), np.uint8)]
_gfn_sets = st.sets(st.integers(0, 499), min_size=1, max_size=200).map(
    lambda s: np.array(sorted(s), dtype=np.int64))
_steps = st.lists(
    st.one_of(st.tuples(st.just("stamp"), _gfn_sets),
              st.tuples(st.just("fill"), _gfn_sets, st.integers(0, len(_POOLS) - 1)),
              st.tuples(st.just("count"), _gfn_sets, st.integers(0, 2**64 - 2))),
    min_size=1, max_size=10)


@settings(derandomize=True, database=None, max_examples=80, deadline=None)
@given(steps=_steps, chunk=st.sampled_from([5, 64, 1 << 16]))
def test_template_digests_equal_the_bytes_digests(steps, chunk):
    """Any sequence of fills, stamps and counters (past 2**32 too): the same digests as the
    bytes, on a generated memory and on a stored one given the same writes."""
    generated, stored = GeneratedMemory(500), StoredMemory(500)
    for step in steps:
        for memory in (generated, stored):
            if step[0] == "stamp":
                memory.stamp(step[1])
            elif step[0] == "fill":
                memory.fill(step[1], _POOLS[step[2]])
            else:  # a counter set high, then stamped (counts are only ever stamped)
                memory.write_count[step[1]] = np.uint64(step[2])
                memory.stamp(step[1])
    old = digest.TEMPLATE_CHUNK_PAGES
    digest.TEMPLATE_CHUNK_PAGES = chunk
    try:
        got = memory_digests(generated)
    finally:
        digest.TEMPLATE_CHUNK_PAGES = old
    np.testing.assert_array_equal(got, page_digests(stored.pages))
    np.testing.assert_array_equal(got, _bytes_digests(generated))
