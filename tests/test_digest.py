"""Page digests: a lost write must show up as a digest difference at its gfn."""

from __future__ import annotations

import numpy as np
import pytest

from migrate.digest import diff_pages, memory_digest, page_digests

PAGE = 4096


def random_pages(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, PAGE), dtype=np.uint8)


def test_single_byte_change_detected_everywhere() -> None:
    base = random_pages(1)
    # Every byte position of the page, each changed by a different delta.
    variants = np.repeat(base, PAGE, axis=0)
    idx = np.arange(PAGE)
    variants[idx, idx] += (idx % 255 + 1).astype(np.uint8)
    digests = page_digests(variants)
    assert not (digests == page_digests(base)[0]).any()
    assert len(np.unique(digests)) == PAGE


def test_stamp_and_version_changes_detected() -> None:
    # A guest that stamps (gfn, version) into the first word of each page.
    pages = np.zeros((64, PAGE), np.uint8)
    words = pages.view(np.uint64)
    words[:, 0] = np.arange(64, dtype=np.uint64) << np.uint64(32)
    before = page_digests(pages)
    words[:, 0] += np.uint64(1)  # version 0 -> 1
    after = page_digests(pages)
    assert len(np.unique(before)) == 64
    assert (before != after).all()


def test_swapped_words_and_pages_differ() -> None:
    page = random_pages(1)
    swapped = page.copy()
    w = swapped.view(np.uint64)
    w[0, [3, 200]] = w[0, [200, 3]]
    assert page_digests(page)[0] != page_digests(swapped)[0]
    two = random_pages(2, seed=5)
    assert (page_digests(two[::-1]) == page_digests(two)[::-1]).all()


def test_zero_and_constant_pages() -> None:
    pages = np.zeros((3, PAGE), np.uint8)
    pages[1] = 1
    pages[2] = 0xFF
    assert len(np.unique(page_digests(pages))) == 3


def test_deterministic_and_chunk_independent() -> None:
    pages = random_pages(2500, seed=1)  # spans several internal chunks
    a = page_digests(pages)
    assert np.array_equal(a, page_digests(pages.copy()))
    assert np.array_equal(a[1234:1240], page_digests(pages[1234:1240]))
    assert np.array_equal(a[::7], page_digests(pages[::7]))  # strided view
    assert memory_digest(a) == memory_digest(a.copy())
    assert a.dtype == np.uint64 and a.shape == (2500,)


def test_fixed_values() -> None:
    """Pinned so that both processes, and reports from other machines, agree bit for bit."""
    pages = np.zeros((2, PAGE), np.uint8)
    pages[1] = np.tile(np.arange(256, dtype=np.uint8), 16)
    digests = page_digests(pages)
    assert [hex(d) for d in digests.tolist()] == ["0x642b36525145f23d", "0x3b605609c14c07c2"]
    assert memory_digest(digests) == "673fc9474dffe8e14fb587b5366eb541"
    assert memory_digest(np.array([1, 2], np.uint64)) != memory_digest(np.array([2, 1], np.uint64))


def test_diff_pages_finds_exactly_changed() -> None:
    src = random_pages(1000, seed=2)
    dst = src.copy()
    rng = np.random.default_rng(3)
    lost = np.sort(rng.choice(1000, 37, replace=False))
    dst[lost, rng.integers(0, PAGE, 37)] ^= np.uint8(0x10)
    a, b = page_digests(src), page_digests(dst)
    assert np.array_equal(diff_pages(a, b), lost)
    assert memory_digest(a) != memory_digest(b)
    assert diff_pages(a, a).size == 0


def test_validation() -> None:
    with pytest.raises(ValueError):
        page_digests(np.zeros((2, 100), np.uint8))
    with pytest.raises(ValueError):
        page_digests(np.zeros((2, PAGE), np.uint16))
    with pytest.raises(ValueError):
        diff_pages(np.zeros(3, np.uint64), np.zeros(4, np.uint64))
    assert page_digests(np.zeros((0, PAGE), np.uint8)).shape == (0,)


def test_digests_of_rows_are_those_of_the_rows_gathered():
    pages = random_pages(300, seed=4)
    whole = page_digests(pages)
    for rows in (np.arange(300), np.arange(1, 300, 3), np.r_[0:40, 41:100, 250:283], [7], []):
        np.testing.assert_array_equal(page_digests(pages, np.asarray(rows, dtype=np.int64)),
                                      whole[np.asarray(rows, dtype=np.int64)])
    for bad in ([3, 2], [1, 1], [300], [-1, 2]):
        with pytest.raises(ValueError, match="strictly ascending"):
            page_digests(pages, np.array(bad))
