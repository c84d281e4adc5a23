"""`masked`, kvm_get_dirty_log_protect: its counters and price, its lock hold, its flush.

Counters are checked against quantities computed here from the written gfns and the spte
arrays, not from what the strategy itself counts.
"""

from __future__ import annotations

import numpy as np
import pytest

from migrate import record
from tests.procs import BROKEN, SMALL, load_json, precopy
from vmmodel import CostTable, HarvestResult
from vmmodel.layout import SPTES_PER_PAGE

PAGES = 8192
# Distinct prices, so that a count charged at the wrong price shows.
ODD_COSTS = CostTable(get_dirty_log_ns=1901.0, bitmap_word_ns=1.3, spte_visit_ns=0.7,
                      rmap_lookup_ns=11.0, rmap_step_ns=5.5, lock_acquire_ns=17.0,
                      tlb_flush_ns=2203.0, tlb_flush_per_vcpu_ns=431.0, word_xchg_ns=6.1,
                      tdp_walk_ns=19.0, spte_clear_ns=7.9)


def fully_mapped(make_vm, shape: str, **kw):
    """Every vCPU (so in shadow every process) wrote every page, then logging was enabled."""
    vm = make_vm(shape, pages=PAGES, logging=False, paused=True, **kw)
    for vcpu in range(vm.guest.vcpus):
        vm.write(vcpu, np.arange(vm.npages))
    vm.enable_dirty_logging()
    return vm


def expected_masked_ns(c: CostTable, words: int, nonzero: int, protect: float, vcpus: int,
                       flushes: int) -> tuple[float, float]:
    hold = words * c.bitmap_word_ns + nonzero * c.word_xchg_ns + protect
    flush = flushes * c.tlb_flush_cost_ns(vcpus)
    return c.get_dirty_log_ns + words * c.bitmap_word_ns + hold + c.lock_acquire_ns + flush, hold


# Three non-zero words: 0 (bits 3, 5 and 60), 1 (bit 10) and 10 (all 64 bits).
DIRTY = np.r_[3, 5, 60, 64 + 10, np.arange(640, 704)]


def test_tdp_counters_and_modeled_time(make_vm):
    vm = fully_mapped(make_vm, "tdp", costs=ODD_COSTS)
    vm.write(1, DIRTY)
    t0 = vm.now_ns
    r = vm.harvest(0, "masked")
    np.testing.assert_array_equal(r.gfns, DIRTY)
    assert r.branch == r.strategy == "masked"
    words = vm.slots[0].bitmap_words
    assert (r.words_scanned, r.words_nonzero) == (words, 3) == (PAGES // 64, 3)
    # The TDP iterator visits each word's leaves from its first set bit to its last.
    assert r.sptes_visited == (60 - 3 + 1) + 1 + 64
    assert r.sptes_cleared == len(DIRTY)  # each written after enable: writable again
    assert (r.rmap_steps, r.shadow_pages_visited) == (0, 0)
    assert (r.lock_acquisitions, r.tlb_flushes) == (1, 1)
    protect = (3 * ODD_COSTS.tdp_walk_ns + r.sptes_visited * ODD_COSTS.spte_visit_ns
               + r.sptes_cleared * ODD_COSTS.spte_clear_ns)
    ns, hold = expected_masked_ns(ODD_COSTS, words, 3, protect, vm.guest.vcpus, 1)
    assert r.kernel_ns == pytest.approx(ns)
    assert r.lock_hold_ns == pytest.approx(hold)
    assert r.longest_lock_hold_ns == pytest.approx(hold)
    assert vm.now_ns - t0 == pytest.approx(r.kernel_ns)
    assert record.to_dict(r)["longest-lock-hold-ns"] == round(hold)
    # Exactly those sptes are read-only now; every other one stays as it was.
    assert not vm.mmu.spte_writable[DIRTY].any()
    assert vm.mmu.spte_writable[:PAGES].sum() == 0  # the rest was protected by enable


def test_shadow_counters_follow_each_gfns_4k_rmap(make_vm):
    vm = fully_mapped(make_vm, "shadow", costs=ODD_COSTS)
    vm.write(1, DIRTY)  # through process 1 (paused: vCPU 1 runs it) or the direct map
    mapping = vm.mmu.spte_present & np.isin(vm.mmu.spte_gfn, DIRTY)
    steps = int(np.count_nonzero(mapping))
    writable = int(np.count_nonzero(mapping & vm.mmu.spte_writable))
    assert steps > len(DIRTY) > 0 and 0 < writable < steps  # aliases, only one written each
    r = vm.harvest(0, "masked")
    np.testing.assert_array_equal(r.gfns, DIRTY)
    assert (r.rmap_steps, r.sptes_cleared, r.sptes_visited) == (steps, writable, 0)
    assert r.words_nonzero == 3
    # kvm_mmu_write_protect_pt_masked looks up each gfn's 4K rmap only, not every page size.
    protect = len(DIRTY) * ODD_COSTS.rmap_lookup_ns + steps * ODD_COSTS.rmap_step_ns
    ns, hold = expected_masked_ns(ODD_COSTS, vm.slots[0].bitmap_words, 3, protect,
                                  vm.guest.vcpus, 1)
    assert r.kernel_ns == pytest.approx(ns) and r.lock_hold_ns == pytest.approx(hold)
    assert not vm.mmu.spte_writable[mapping].any()


@pytest.mark.parametrize("shape", ["tdp", "shadow"])
def test_a_masked_harvest_follows_the_dirty_words_not_the_mapped_sptes(make_vm, shape):
    """One dirty page in a fully mapped slot: the walk visits every shadow page and spte, the
    masked loop one word; with every word dirty, masked pays per word and spte."""
    vm = fully_mapped(make_vm, shape)
    vm.write(0, np.array([4321]))
    masked = vm.harvest(0, "masked")
    vm.write(0, np.array([4321]))
    walk = vm.harvest(0, "walk")
    assert masked.gfns.tolist() == walk.gfns.tolist() == [4321]
    assert masked.words_nonzero == 1
    assert masked.lock_hold_ns < walk.lock_hold_ns / 10
    assert walk.sptes_visited >= PAGES and masked.sptes_visited <= 1
    if shape == "tdp":
        vm.write(0, np.arange(PAGES))
        every = vm.harvest(0, "masked")
        assert every.words_nonzero == PAGES // 64 and every.sptes_visited == PAGES
        assert every.sptes_cleared == PAGES


def test_a_non_zero_word_is_flushed_even_if_no_spte_changed(make_vm):
    """kvm_get_dirty_log_protect sets `flush` for every non-zero word, whether or not
    kvm_arch_mmu_enable_log_dirty_pt_masked changed an spte (here the page's shadow page
    was zapped: nothing maps it)."""
    vm = make_vm("tdp", pages=PAGES, max_mmu_pages=8, paused=True)
    vm.write(0, np.array([5]))
    for sp in range(1, 16):
        vm.write(0, np.array([sp * SPTES_PER_PAGE]))
    assert not vm.mmu.spte_present[5]
    vm.slots[0].dirty_bitmap[np.arange(1, 16) * SPTES_PER_PAGE] = False  # leave gfn 5 alone
    r = vm.harvest(0, "masked")
    assert r.gfns.tolist() == [5]
    assert (r.words_nonzero, r.sptes_cleared, r.tlb_flushes) == (1, 0, 1)
    empty = vm.harvest(0, "masked")
    assert (empty.words_nonzero, empty.tlb_flushes) == (0, 0)


def test_masked_noflush_leaves_stale_writable_tlb_entries(make_vm):
    vm = make_vm("tdp", "hotspot", pages=PAGES, seed=4, rate=4e6)
    vm.advance(5e6)
    result = vm.harvest(0, "masked-noflush")
    assert result.tlb_flushes == 0 and len(result.gfns) > 0
    assert vm.tlbs.stale_writable(vm.mmu.spte_writable) > 0
    control = make_vm("tdp", "hotspot", pages=PAGES, seed=4, rate=4e6)
    control.advance(5e6)
    assert control.harvest(0, "masked").tlb_flushes == 1
    assert control.tlbs.stale_writable(control.mmu.spte_writable) == 0


# ------------------------------------------------------------------ the longest lock hold


def test_the_longest_lock_hold_of_each_strategy(make_vm):
    """walk and masked hold mmu_lock once: the longest hold is the whole hold; rmap takes it
    per gfn, the longest for the gfn with the most aliases (shadow)."""
    vm = fully_mapped(make_vm, "shadow", costs=ODD_COSTS)
    gfns = np.arange(0, PAGES, 7)
    for name in ("walk", "masked"):
        vm.write(0, gfns)
        r = vm.harvest(0, name)
        assert r.lock_hold_ns > 0 and r.longest_lock_hold_ns == pytest.approx(r.lock_hold_ns)
    vm.write(0, gfns)
    most = int(vm.mmu.rmap_len[gfns].max())
    r = vm.harvest(0, "rmap")
    assert most > 1 and r.lock_acquisitions == len(gfns)
    assert r.longest_lock_hold_ns == pytest.approx(
        3 * ODD_COSTS.rmap_lookup_ns + most * ODD_COSTS.rmap_step_ns)
    assert r.longest_lock_hold_ns > r.lock_hold_ns / r.lock_acquisitions


def test_a_sync_over_two_slots_keeps_the_longest_hold_not_the_sum(make_vm):
    vm = make_vm("tdp", "vga", pages=PAGES, vga_pages=512, fps=1000.0)
    vm.write(0, np.arange(0, 4096, 3))
    vm.advance(3e6)
    result = vm.sync_dirty_log("masked")
    ram, vga = result.slots
    assert result.longest_lock_hold_ns == max(ram.longest_lock_hold_ns,
                                              vga.longest_lock_hold_ns)
    assert result.lock_hold_ns == pytest.approx(ram.lock_hold_ns + vga.lock_hold_ns)
    assert result.words_nonzero == ram.words_nonzero + vga.words_nonzero
    assert HarvestResult.merge([ram]) is ram


# ------------------------------------------------------------------ end to end


def test_a_migration_with_masked_verifies(tmp_path):
    out = tmp_path / "masked.json"
    proc = precopy("run", str(SMALL), "--quiet", "--json", str(out),
                   "--set", "mmu.strategy=masked")
    assert proc.returncode == 0, proc.stderr
    report = load_json(out)
    assert report["status"] == "completed" and report["verified"] is True
    # every sync's (the interval the completion ends has none of its own)
    harvests = [r["harvest"] for r in report["rounds"] if r["harvest"]["strategy"]]
    assert {h["strategy"] for h in harvests} == {"masked"}
    assert all(h["lock-acquisitions"] <= 1 and h["words-scanned"] == 64 * 1024 // 256
               for h in harvests)  # one hold per sync; 64 MiB: 16384 pages, 256 words
    assert any(h["words-nonzero"] > 0 and h["sptes-cleared"] > 0 for h in harvests)


@pytest.mark.parametrize("seed", (1, 2))
def test_masked_noflush_is_caught_losing_writes(tmp_path, seed):
    out = tmp_path / "noflush.json"
    proc = precopy("run", str(BROKEN), "--quiet", "--json", str(out),
                   "--set", "mmu.strategy=masked-noflush", "--set", f"seed={seed}")
    assert proc.returncode == 1
    report = load_json(out)
    assert report["verified"] is False and report["lost-pages"]
    assert report["lost-count"] == len(report["lost-pages"])
