"""The destination's store: its image or one digest per page, verified the same way.

Unit tests of the stores behind the receiver, then real `precopy dest --store ...`
processes taking a `precopy source` migration: the same report with either store,
the same lost gfns for a broken strategy, and --max-memory bounding the store.
"""

from __future__ import annotations

import numpy as np
import pytest

from migrate import wire
from migrate.dest.receiver import Receiver
from migrate.dest.store import AUTO_DIGESTS_PAGES, ZERO_DIGEST, DigestStore, ImageStore, choose
from migrate.digest import page_digests
from migrate.errors import MemoryTooLarge
from tests import wire_oracle as oracle
from tests.procs import BROKEN, SMALL, Destination, load_json, precopy
from tests.test_migration import _strip_wall

PAGE = wire.PAGE_SIZE
NPAGES = 64


def _hello(npages: int) -> dict:
    return {"page-size": PAGE, "memory-pages": npages}


def _batch(pass_no: int, gfns: list[int], pages: np.ndarray) -> wire.PageBatch:
    ((header, body),) = oracle.split_frames(oracle.encode_pages(pass_no, np.array(gfns), pages),
                                            1 << 24)
    return wire.decode_pages(header, body, max_gfn=NPAGES)


def _apply_races(store: str):
    """Pass 2 before pass 1 (parallel channels), a page zeroed by a later pass, one page
    never sent: the receiver's filter decides, the store keeps what it is handed."""
    rng = np.random.default_rng(7)
    receiver = Receiver(max_memory_pages=NPAGES, store=store)
    incoming = receiver.hello(_hello(NPAGES))
    p1 = rng.integers(0, 256, (4, PAGE), dtype=np.uint8)
    p2 = rng.integers(0, 256, (4, PAGE), dtype=np.uint8)
    p2[1] = 0  # gfn 11 is a ZERO page in pass 2
    receiver.apply(incoming, _batch(2, [10, 11, 12, 13], p2))
    receiver.apply(incoming, _batch(1, [10, 11, 12, 14], p1))  # older: only gfn 14 is kept
    receiver.apply(incoming, _batch(3, [13], np.zeros((1, PAGE), np.uint8)))
    expected = np.zeros((NPAGES, PAGE), dtype=np.uint8)
    expected[[10, 11, 12, 13]] = p2
    expected[14] = p1[3]
    expected[13] = 0
    return receiver, incoming, expected


def test_zero_digest_is_the_digest_of_a_zero_page():
    assert ZERO_DIGEST == page_digests(np.zeros((1, PAGE), np.uint8))[0]


@pytest.mark.parametrize("store", ["image", "digests"])
def test_store_keeps_the_latest_pass_and_digests_like_the_source(store):
    receiver, incoming, expected = _apply_races(store)
    assert incoming.store.name == store and receiver.status()["store"] == store
    assert np.array_equal(incoming.store.digests(), page_digests(expected))
    assert incoming.page_pass[[10, 11, 12, 13, 14, 15]].tolist() == [2, 2, 2, 3, 1, 0]
    assert incoming.pages_received == 9 and incoming.zero_pages == 2


def test_digest_store_holds_no_image():
    _, incoming, _ = _apply_races("digests")
    assert isinstance(incoming.store, DigestStore)
    assert not hasattr(incoming.store, "memory")
    held = sum(a.nbytes for a in vars(incoming.store).values() if isinstance(a, np.ndarray))
    assert held == DigestStore.held_bytes(NPAGES) == 12 * NPAGES


@pytest.mark.parametrize("store", ["image", "digests"])
def test_verify_names_the_gfns_that_differ(store):
    receiver, incoming, expected = _apply_races(store)
    source = expected.copy()
    source[[3, 12]] ^= 1  # a page never sent, and one whose last write was lost
    receiver.begin_complete(incoming)
    result = receiver.verify(incoming, b"", page_digests(source))
    assert result["verified"] is False and result["status"] == "verification-failed"
    assert result["lost-gfns"] == [3, 12] and result["lost-count"] == 2
    ok = receiver.verify(incoming, b"", page_digests(expected))
    assert ok["verified"] is True and ok["lost-gfns"] == []


def test_both_stores_give_the_same_verification():
    results = []
    for store in ("image", "digests"):
        receiver, incoming, expected = _apply_races(store)
        source = expected.copy()
        source[40] = 5
        result = receiver.verify(incoming, b"dev", page_digests(source))
        results.append({k: v for k, v in result.items() if k != "verify-ms"})
    assert results[0] == results[1]


def test_auto_is_the_image_while_it_fits_then_the_digests():
    assert choose("auto", 1024, 1024 * PAGE) is ImageStore
    assert choose("auto", 1025, 1024 * PAGE) is DigestStore
    # From AUTO_DIGESTS_PAGES up, the digests even where the image would fit.
    assert choose("auto", AUTO_DIGESTS_PAGES - 1, AUTO_DIGESTS_PAGES * PAGE) is ImageStore
    assert choose("auto", AUTO_DIGESTS_PAGES, AUTO_DIGESTS_PAGES * PAGE) is DigestStore
    assert choose("image", AUTO_DIGESTS_PAGES, AUTO_DIGESTS_PAGES * PAGE) is ImageStore
    assert choose("auto", 1024 * PAGE // 12 + 1, 1024 * PAGE) is None
    assert choose("image", 1025, 1024 * PAGE) is None
    assert choose("digests", 1024 * PAGE // 12, 1024 * PAGE) is DigestStore
    with pytest.raises(ValueError, match="unknown store"):
        Receiver(max_memory_pages=8, store="disk")


def test_max_memory_bounds_the_store_not_the_guest():
    big = 1 << 20  # a 4 GiB guest against a 16 MiB --max-memory: its digests are 12 MiB
    assert Receiver(max_memory_pages=4096, store="auto").hello(_hello(big)).store.name == "digests"
    with pytest.raises(MemoryTooLarge, match="its image would need 4294967296 bytes; "
                                             "--store digests holds 12 bytes a page"):
        Receiver(max_memory_pages=4096, store="image").hello(_hello(big))
    with pytest.raises(MemoryTooLarge, match="its digests would need"):
        Receiver(max_memory_pages=1024, store="digests").hello(_hello(big))



def test_a_store_the_host_cannot_allocate_is_a_refusal_not_a_crash(monkeypatch):
    """--max-memory above what the host has: HELLO is refused (413), never an internal error."""
    def no_memory(self, npages):
        raise MemoryError

    monkeypatch.setattr(ImageStore, "__init__", no_memory)
    receiver = Receiver(max_memory_pages=1 << 30, store="image")
    with pytest.raises(MemoryTooLarge, match="cannot allocate its image store"):
        receiver.hello(_hello(1 << 20))
    assert receiver.current is None

# -- real processes ---------------------------------------------------------------------------


def _migrate(tmp_path, store: str, *config: str) -> tuple[int, dict]:
    out = tmp_path / f"{store}.json"
    with Destination("--store", store) as dest:
        proc = precopy("source", *config, "--dest", dest.url, "--quiet", "--json", str(out))
    return proc.returncode, load_json(out)


def test_the_same_report_with_either_store(tmp_path):
    reports = {}
    for store in ("image", "digests"):
        code, report = _migrate(tmp_path, store, str(SMALL))
        assert code == 0 and report["verified"] is True, store
        reports[store] = _strip_wall(report)
    assert reports["image"] == reports["digests"]


def test_a_broken_strategy_loses_the_same_gfns_with_either_store(tmp_path):
    config = (str(BROKEN), "--set", "mmu.strategy=rmap-noflush")
    reports = {}
    for store in ("image", "digests"):
        code, report = _migrate(tmp_path, store, *config)
        assert code != 0 and report["verified"] is False, store
        reports[store] = report
    assert reports["digests"]["lost-pages"] == reports["image"]["lost-pages"] != []
    assert reports["digests"]["lost-count"] == reports["image"]["lost-count"]
    assert _strip_wall(reports["digests"]) == _strip_wall(reports["image"])


def test_a_guest_larger_than_max_memory_is_taken_with_digests_only(tmp_path):
    """8 MiB guest, 1 MiB --max-memory: its image does not fit, its 24 KiB of digests do."""
    config = (str(SMALL), "--set", "guest.memory=8MiB", "--set", "mmu.mapped-memory=4MiB")
    out = tmp_path / "r.json"
    with Destination("--max-memory", "1MiB") as dest:  # auto
        proc = precopy("source", *config, "--dest", dest.url, "--quiet", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert load_json(out)["verified"] is True
    with Destination("--max-memory", "1MiB", "--store", "image") as dest:
        proc = precopy("source", *config, "--dest", dest.url, "--quiet")
    assert proc.returncode != 0
    said = [line for line in proc.stderr.splitlines() if "exceeds --max-memory" in line]
    assert len(said) == 1, proc.stderr
    assert "its image would need 8388608 bytes; --store digests holds 12 bytes a page" in said[0]


def test_auto_and_run_keep_digests_from_the_same_size():
    """`precopy dest --store auto` and the store `precopy run` picks switch at one size (the
    destination cannot import the config: two constants, kept equal here)."""
    from migrate.config.host import DIGEST_STORE_FROM_PAGES

    assert AUTO_DIGESTS_PAGES == DIGEST_STORE_FROM_PAGES
