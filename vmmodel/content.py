"""Guest page content: what a running guest's memory looks like, for prefill and benches.

One place for it, so that the model's prefill and `precopy bench wire` fill
pages from the same vocabulary of content. Built once per VM or bench, so the
small loops over template pages are not on any hot path.
"""

from __future__ import annotations

import numpy as np

from vmmodel.spec import PAGE_SIZE

TEXT_POOL_PAGES = 64  # template pages per VM: prefill cycles through them
VOCABULARY_WORDS = 4096  # distinct words of `text_pages`

WORDS = (
    b"the of and to in is that for it as with was on be by at this from or have an are not "
    b"page memory guest host dirty bitmap slot spte rmap lock flush write fault kernel user "
    b"process thread file buffer cache queue request response error value index count size "
    b"return static const struct unsigned long int char void if else while for break switch"
).split()


def text_pool(rng: np.random.Generator) -> np.ndarray:
    """Template page contents in the proportions of a running guest's memory.

    Three eighths text (words), a quarter sparse structures (mostly zero, a
    pointer every few words), a quarter incompressible (compressed files,
    keys), one eighth repetitive (code, tables): lz4 shrinks such memory
    about twofold, as it does real guest RAM.
    """
    pool = np.zeros((TEXT_POOL_PAGES, PAGE_SIZE), dtype=np.uint8)
    words = np.array(WORDS, dtype=object)
    for i in range(TEXT_POOL_PAGES):
        kind = i % 8
        if kind < 3:
            text = b" ".join(words[rng.integers(0, len(words), 900)])
            pool[i] = np.frombuffer(text[:PAGE_SIZE].ljust(PAGE_SIZE, b"\n"), dtype=np.uint8)
        elif kind < 5:
            slots = pool[i].view(np.uint64)
            used = rng.random(512) < 0.2
            slots[used] = rng.integers(0xFFFF8000_00000000, 0xFFFFFFFF_FFFFFFF8, used.sum(),
                                       dtype=np.uint64, endpoint=True)
        elif kind < 7:
            pool[i] = rng.integers(0, 256, PAGE_SIZE, dtype=np.uint8)
        else:
            pool[i] = np.tile(rng.integers(0, 256, 64, dtype=np.uint8), 64)
    return pool


def text_pages(rng: np.random.Generator, npages: int) -> np.ndarray:
    """Pages of text: words of a `VOCABULARY_WORDS` vocabulary, common ones far more often (Zipf).

    No two pages alike, unlike `text_pool`'s templates: for measuring compression
    and the wire on many distinct text pages.
    """
    letters = np.frombuffer(b"etaoinshrdlucmfwypvbgkqjxz", dtype=np.uint8)
    lengths = rng.integers(2, 11, VOCABULARY_WORDS)
    vocabulary = [bytes(letters[rng.integers(0, 26, n)]) for n in lengths]
    rank = np.arange(1, len(vocabulary) + 1)
    weights = 1.0 / rank / (1.0 / rank).sum()
    picks = rng.choice(len(vocabulary), npages * PAGE_SIZE // 5, p=weights)
    seps = np.where(rng.random(len(picks)) < 0.08, b"\n", b" ")
    text = b"".join(vocabulary[i] + sep for i, sep in zip(picks.tolist(), seps.tolist(),
                                                          strict=True))
    return np.frombuffer(text[: npages * PAGE_SIZE], dtype=np.uint8).reshape(npages, PAGE_SIZE)
