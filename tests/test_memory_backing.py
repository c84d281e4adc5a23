"""Memory backing: a generated guest's pages are the stored guest's, byte for byte.

`guest.memory-backing` must never change a result, only how much host memory
the source holds: the same bytes read, the same zero pages, the same digests,
the same frames on the wire, the same report.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from migrate import wire
from migrate.config import load_scenario
from migrate.digest import memory_digests, page_digests
from tests.procs import BROKEN, SMALL, load_json, precopy
from tests.test_migration import _strip_wall
from vmmodel import PAGE_SIZE, GuestSpec, MmuSpec, SpecError, Vm
from vmmodel.content import text_pool
from vmmodel.memory import (
    AUTO_GENERATED_PAGES,
    GeneratedMemory,
    StoredMemory,
    make_memory,
)

NPAGES = 3000

# One step: ("stamp", gfns) or ("fill", gfns, pool number), gfns a set inside guest memory.
_gfn_sets = st.sets(st.integers(0, NPAGES - 1), min_size=1, max_size=400).map(
    lambda s: np.array(sorted(s), dtype=np.int64))
_steps = st.lists(
    st.one_of(st.tuples(st.just("stamp"), _gfn_sets),
              st.tuples(st.just("fill"), _gfn_sets, st.integers(0, 2))),
    min_size=1, max_size=12)


def _pools() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [text_pool(rng), text_pool(rng)[:17], np.zeros((5, PAGE_SIZE), dtype=np.uint8)]


POOLS = _pools()


def _apply(steps, *memories) -> None:
    for step in steps:
        for memory in memories:
            if step[0] == "stamp":
                memory.stamp(step[1])
            else:
                memory.fill(step[1], POOLS[step[2]])


@settings(derandomize=True, database=None, max_examples=60, deadline=None)
@given(steps=_steps, probe=st.lists(st.integers(0, NPAGES - 1), min_size=1, max_size=300))
def test_generated_pages_are_the_stored_pages(steps, probe):
    stored, generated = StoredMemory(NPAGES), GeneratedMemory(NPAGES)
    _apply(steps, stored, generated)
    np.testing.assert_array_equal(generated.write_count, stored.write_count)
    assert np.array_equal(generated.pages, stored.pages)
    gfns = np.array(probe, dtype=np.int64)  # any order, repeats allowed, as a batch may be
    a = np.empty((len(gfns), PAGE_SIZE), dtype=np.uint8)
    b = np.full_like(a, 0xAA)  # garbage in the caller's buffer must be overwritten
    stored.read(gfns, a)
    generated.read(gfns, b)
    assert np.array_equal(a, b)
    np.testing.assert_array_equal(generated.zero_mask(gfns), ~a.any(axis=1))
    np.testing.assert_array_equal(stored.zero_mask(gfns), ~a.any(axis=1))
    np.testing.assert_array_equal(memory_digests(generated), memory_digests(stored))
    for compress in (False, True):  # same frame, zero pages and lz4 included
        gathered = wire.encode_gathered(5, stored.pages, gfns, compress=compress)
        read = wire.encode_read(5, gfns, generated.zero_mask(gfns), generated.read,
                                compress=compress)
        assert b"".join(map(bytes, read.parts)) == b"".join(map(bytes, gathered.parts))
        assert (read.n_zero, read.compressed) == (gathered.n_zero, gathered.compressed)


class _Opaque(GeneratedMemory):
    """A backing whose reader can only read it: no array, no templates."""

    @property
    def templates(self) -> None:
        return None


def test_a_backing_without_templates_is_read_in_bounded_chunks(monkeypatch):
    """A backing with neither array nor templates is digested a chunk at a time, never all
    pages at once (a generated one is not read at all: tests/test_template_digests.py)."""
    import migrate.digest as digest

    memory = _Opaque(10_000)
    memory.fill(np.arange(0, 9000, 3), POOLS[0])
    biggest = []
    real = memory.read

    def spy(gfns, out):
        biggest.append(len(gfns))
        real(gfns, out)

    monkeypatch.setattr(memory, "read", spy)
    monkeypatch.setattr(digest, "READ_CHUNK_PAGES", 1024)
    got = digest.memory_digests(memory)
    assert max(biggest) == 1024 and sum(biggest) == 10_000
    stored = StoredMemory(10_000)
    stored.fill(np.arange(0, 9000, 3), POOLS[0])
    np.testing.assert_array_equal(got, page_digests(stored.pages))


def test_auto_picks_generated_from_its_size_up():
    assert make_memory("auto", AUTO_GENERATED_PAGES - 1).kind == "stored"
    assert make_memory("auto", AUTO_GENERATED_PAGES).kind == "generated"
    assert make_memory("stored", AUTO_GENERATED_PAGES).kind == "stored"
    with pytest.raises(ValueError, match="memory backing"):
        make_memory("mmap", 1024)
    with pytest.raises(SpecError, match="guest.memory-backing"):
        GuestSpec(memory_backing="mmap")


def test_a_generated_image_cannot_be_written_by_mistake():
    """Writing a generated guest's `pages` would change nothing the guest holds: refused."""
    memory = GeneratedMemory(1024)
    with pytest.raises(ValueError, match="read-only"):
        memory.pages[3] = 1


def test_a_large_generated_guest_holds_no_page_bytes():
    """A prefilled 4 GiB generated guest's memory holds 9 B per page, not 4 KiB: < 100 MiB."""
    guest = load_scenario(None, ["guest.memory=4GiB", "guest.memory-backing=generated"]).guest
    vm = Vm(guest, MmuSpec(), load_scenario(None).costs, seed=1)
    vm.prefill()
    assert vm.memory.kind == "generated" and vm.memory.write_count.any()
    assert vm.memory.nbytes < 100 * 2**20
    assert vm.memory.nbytes < guest.memory_pages * 16


def test_the_key_is_read_and_echoed_only_when_set():
    assert load_scenario(None).guest.memory_backing == "auto"
    assert Vm(load_scenario(SMALL).guest, MmuSpec(), load_scenario(None).costs, 1).memory.kind \
        == "stored"
    assert "memory-backing" not in load_scenario(None).to_dict()["guest"]  # reports unchanged
    s = load_scenario(None, ["guest.memory-backing=generated"])
    assert s.guest.memory_backing == "generated"
    assert s.to_dict()["guest"]["memory-backing"] == "generated"


def _report(tmp_path, config, *sets):
    """Run `config` under each backing; return (returncode, report without wall times) each."""
    runs = []
    for backing in ("stored", "generated"):
        out = tmp_path / f"{backing}.json"
        proc = precopy("run", str(config), "--quiet", "--json", str(out),
                       "--set", f"guest.memory-backing={backing}", *sets)
        report = _strip_wall(load_json(out))
        assert report["config"]["guest"].pop("memory-backing") == backing
        runs.append((proc.returncode, report))
    return runs


def test_a_run_reports_the_same_whichever_backing(tmp_path):
    (rc_s, stored), (rc_g, generated) = _report(tmp_path, SMALL)
    assert rc_s == rc_g == 0 and stored["verified"] is True
    assert generated == stored


def test_a_lost_write_is_caught_the_same_whichever_backing(tmp_path):
    (rc_s, stored), (rc_g, generated) = _report(tmp_path, BROKEN, "--set",
                                                "mmu.strategy=rmap-noflush")
    assert rc_s == rc_g == 1 and stored["verified"] is False and stored["lost-pages"]
    assert generated == stored


@pytest.mark.parametrize("first,length", [(0, 1), (5, 63), (64, 64), (70, 65), (1, 256),
                                          (100, 513), (2990, 10)])
def test_a_run_of_generated_pages_is_read_as_the_stored_run(first, length):
    """A run (a first pass's batch) is copied from the pool in slices, cycling through it
    from any offset, or gathered when that would take too many copies: the same bytes."""
    stored, generated = StoredMemory(NPAGES), GeneratedMemory(NPAGES)
    steps = [("fill", np.arange(0, NPAGES, dtype=np.int64), 0),
             ("stamp", np.arange(0, NPAGES, 3, dtype=np.int64))]
    _apply(steps, stored, generated)
    gfns = np.arange(first, first + length, dtype=np.int64)
    a = np.empty((length, PAGE_SIZE), dtype=np.uint8)
    b = np.full_like(a, 0xAA)
    stored.read(gfns, a)
    generated.read(gfns, b)
    assert np.array_equal(a, b)
