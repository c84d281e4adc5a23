"""The MMU model: sptes, shadow pages and the rmap stay consistent; the checker can fail.

Random operations (faults through guest writes, harvests by every strategy, zaps forced by
a small `max_mmu_pages`) on both shapes must leave `check_consistency()` empty; deliberate
corruptions of the rmap and sptes must be reported.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from vmmodel import STRATEGIES
from vmmodel.layout import SPTE_SHIFT
from vmmodel.mmu import unique_ids

PAGES = 8192
HYP = settings(max_examples=40, deadline=None, derandomize=True,
               suppress_health_check=[HealthCheck.function_scoped_fixture,
                                      HealthCheck.too_slow])

gfn_lists = st.lists(st.integers(0, PAGES - 1), min_size=1, max_size=48)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, 3), gfn_lists),
        st.tuples(st.just("harvest"), st.sampled_from(sorted(STRATEGIES)), st.just(None)),
        st.tuples(st.just("zap"), st.integers(1, 4), st.just(None)),
    ),
    min_size=1, max_size=30,
)


def present_ids_of(vm, gfn: int) -> np.ndarray:
    """Every present spte that maps `gfn`, found by scanning the sptes (not the rmap)."""
    return np.flatnonzero(vm.mmu.spte_present & (vm.mmu.spte_gfn == gfn))


# ------------------------------------------------------------------ random operations


@pytest.mark.parametrize("shape,pml", [("tdp", False), ("shadow", False), ("tdp", True)])
@HYP
@given(ops=operations)
# Hypothesis found this one (which random examples it tries depends on the modules loaded):
# a write-protect fault and page faults in one batch, the zap taking the protected spte's page.
@example(ops=[("write", 0, [0]), ("harvest", "heuristic", None),
              ("write", 0, [sp * 512 for sp in range(8)])])
def test_rmap_and_sptes_agree_after_random_operations(make_vm, shape, pml, ops):
    # 8192 pages need 16 leaf pages in tdp, more in shadow: a budget of 10 forces zaps.
    vm = make_vm(shape, pages=PAGES, max_mmu_pages=10, paused=True, pml=pml)
    for op, arg, gfns in ops:
        if op == "write":
            vm.write(arg, np.array(gfns))
        elif op == "harvest":
            vm.harvest(0, arg)
        else:
            vm.mmu.zap_oldest_mmu_pages(arg)
            vm.tlbs.flush_all()
        problems = vm.mmu.check_consistency()
        assert problems == [], f"after {op} {arg} {gfns}: {problems}"


@pytest.mark.parametrize("shape,pml", [("tdp", False), ("shadow", False), ("tdp", True)])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_rmap_and_sptes_agree_with_a_running_guest_and_zapping(make_vm, shape, pml, seed):
    # No prefill: pages are faulted in while the guest runs, so the budget forces zaps.
    vm = make_vm(shape, "hotspot", pages=4 * PAGES, seed=seed, rate=100_000.0, hot_memory=0.1,
                 prefill=False, max_mmu_pages=12, pml=pml)
    for step in range(15):
        vm.advance(2e6)
        vm.sync_dirty_log(("walk", "rmap", "heuristic", "masked")[step % 4])
        assert vm.mmu.check_consistency() == [], f"step {step}"
    assert vm.stats.zapped_pages > 0  # the budget really was exceeded


def test_a_write_fault_fixed_in_the_same_batch_as_a_zap_leaves_no_writable_absent_spte(make_vm):
    """One batch of writes: a write-protect fault on the oldest shadow page, and a page fault
    that needs a new shadow page beyond the budget. The zap that makes room takes the oldest
    page, whose spte the same batch then makes writable again: a writable spte that is not
    present (and a TLB entry for it). The pages a batch is faulting through must be spared.
    """
    vm = make_vm("tdp", pages=PAGES, max_mmu_pages=8, paused=True)
    for sp in range(5):
        vm.write(0, np.array([sp * 512]))
    vm.harvest(0, "walk")  # all five write-protected
    valid = np.flatnonzero(vm.mmu.sp_valid)
    oldest = int(valid[np.argmin(vm.mmu.sp_created[valid])])
    protected = oldest * 512
    assert vm.mmu.spte_present[protected] and not vm.mmu.spte_writable[protected]
    vm.write(1, np.array([protected, 7 * 512]))
    assert vm.stats.zapped_pages > 0
    assert vm.mmu.check_consistency() == []
    assert not (vm.mmu.spte_writable[protected] and not vm.mmu.spte_present[protected])


# ------------------------------------------------------------------ the checker can fail


@pytest.fixture(params=["tdp", "shadow"])
def faulted_vm(request, make_vm):
    """A guest whose four vCPUs (one process each, in shadow) wrote the same pages."""
    vm = make_vm(request.param, pages=PAGES, paused=True)
    gfns = np.arange(0, PAGES, 7)
    for vcpu in range(4):
        vm.write(vcpu, gfns)
    assert vm.mmu.check_consistency() == []
    return vm


def test_checker_reports_a_dropped_rmap_entry(faulted_vm):
    mmu = faulted_vm.mmu
    gfn = int(np.flatnonzero(mmu.rmap_len > 0)[0])
    last = mmu.rmap_len[gfn] - 1
    mmu.rmap_sptes[gfn, last] = -1
    mmu.rmap_len[gfn] = last
    problems = mmu.check_consistency()
    assert any("missing from the rmap" in p for p in problems), problems


def test_checker_reports_an_rmap_entry_for_another_gfn(faulted_vm):
    mmu = faulted_vm.mmu
    a, b = np.flatnonzero(mmu.rmap_len > 0)[:2]
    mmu.rmap_sptes[a, 0], mmu.rmap_sptes[b, 0] = mmu.rmap_sptes[b, 0], mmu.rmap_sptes[a, 0]
    problems = mmu.check_consistency()
    assert any(f"gfns [{a}" in p and "other gfns" in p for p in problems), problems


def test_checker_reports_an_rmap_entry_for_an_absent_spte(faulted_vm):
    mmu = faulted_vm.mmu
    gfn = int(np.flatnonzero(mmu.rmap_len > 0)[0])
    mmu.spte_present[mmu.rmap_sptes[gfn, 0]] = False
    mmu.spte_writable[mmu.rmap_sptes[gfn, 0]] = False
    problems = mmu.check_consistency()
    assert any("not present" in p for p in problems), problems


def test_checker_reports_a_writable_spte_that_is_not_present(faulted_vm):
    mmu = faulted_vm.mmu
    absent = int(np.flatnonzero(~mmu.spte_present & (mmu.spte_gfn >= 0))[0])
    mmu.spte_writable[absent] = True
    assert "writable spte that is not present" in mmu.check_consistency()


def test_checker_reports_a_dirty_spte_that_is_not_present(faulted_vm):
    mmu = faulted_vm.mmu
    absent = int(np.flatnonzero(~mmu.spte_present & (mmu.spte_gfn >= 0))[0])
    mmu.spte_dirty[absent] = True
    assert "dirty spte that is not present" in mmu.check_consistency()


def test_a_fault_sets_the_d_bit_and_a_zap_clears_it(make_vm):
    vm = make_vm("tdp", pages=PAGES, max_mmu_pages=8, paused=True)
    vm.write(0, np.array([3]))
    assert vm.mmu.spte_dirty[3] and vm.mmu.spte_writable[3]
    vm.mmu.zap_oldest_mmu_pages(1)
    assert not vm.mmu.spte_dirty[3] and not vm.mmu.spte_present[3]


def test_checker_reports_a_duplicated_rmap_entry(faulted_vm):
    mmu = faulted_vm.mmu
    a, b = np.flatnonzero(mmu.rmap_len > 0)[:2]
    # gfn b's rmap lists gfn a's spte a second time (and loses its own)
    mmu.rmap_sptes[b, 0] = mmu.rmap_sptes[a, 0]
    problems = mmu.check_consistency()
    assert "a spte appears twice in the rmap" in problems, problems


def test_checker_reports_a_wrong_leaf_page_count(faulted_vm):
    faulted_vm.mmu.n_leaf_pages += 1
    assert "n_leaf_pages disagrees with the valid shadow pages" in (
        faulted_vm.mmu.check_consistency())


# ------------------------------------------------------------------ faults, zaps, rmap


def test_rmap_lists_exactly_the_present_sptes_of_each_gfn(faulted_vm):
    mmu = faulted_vm.mmu
    for gfn in (0, 7, 700, PAGES - 1 - (PAGES - 1) % 7):
        listed = np.sort(mmu.rmap_sptes[gfn, : mmu.rmap_len[gfn]])
        np.testing.assert_array_equal(listed, present_ids_of(faulted_vm, gfn))


def test_shadow_paging_aliases_a_gfn_through_several_processes(make_vm):
    vm = make_vm("shadow", pages=PAGES, paused=True)
    as_map = vm.mmu.layout.address_space_map
    shared = np.flatnonzero((as_map >= 0).all(axis=0))  # mapped by every process
    assert len(shared) > 0
    gfn = int(shared[0])
    for vcpu in range(4):  # paused: vCPU v runs process v
        vm.write(vcpu, np.array([gfn]))
    assert vm.mmu.rmap_len[gfn] == 4
    assert set(vm.mmu.rmap_sptes[gfn, :4]) == set(as_map[:, gfn])
    flush, steps, cleared = vm.mmu.rmap_write_protect(np.array([gfn]))
    assert flush and steps == cleared == 4
    assert not vm.mmu.spte_writable[as_map[:, gfn]].any()


def test_zap_removes_sptes_from_rmap_and_counts(make_vm):
    vm = make_vm("tdp", pages=PAGES, paused=True)
    vm.write(0, np.arange(0, 2048, 3))  # four leaf pages
    before = vm.mmu.n_used_mmu_pages
    assert vm.mmu.n_leaf_pages == 4
    zapped = vm.mmu.zap_oldest_mmu_pages(1)
    assert zapped == 1 and vm.mmu.n_leaf_pages == 3
    assert vm.mmu.n_used_mmu_pages == before - 1
    gone = np.flatnonzero(~vm.mmu.sp_valid[: 4])
    assert len(gone) == 1
    assert vm.mmu.rmap_len[gone[0] * 512 : (gone[0] + 1) * 512].sum() == 0
    assert vm.mmu.check_consistency() == []


def test_budget_keeps_n_used_mmu_pages_bounded_and_zaps_the_oldest(make_vm):
    vm = make_vm("tdp", pages=PAGES, max_mmu_pages=8, paused=True)
    for sp in range(16):
        vm.write(0, np.array([sp * 512 + 1]))
        # leaf pages + level-2 + level-3 parents + root stay within the budget
        assert vm.mmu.n_used_mmu_pages <= 8
    assert vm.stats.zapped_pages > 0
    assert vm.mmu.sp_valid[15] and not vm.mmu.sp_valid[0]  # newest kept, oldest zapped


def test_unique_ids_matches_numpy_unique():
    rng = np.random.default_rng(5)
    scratch = np.zeros(1000, dtype=np.int64)
    for _ in range(20):
        ids = rng.integers(0, 1000, rng.integers(0, 300))
        np.testing.assert_array_equal(np.sort(unique_ids(ids, scratch)), np.unique(ids))


def test_leaf_page_of_a_tdp_spte_is_its_gfn_over_512(make_vm):
    vm = make_vm("tdp", pages=PAGES, paused=True)
    vm.write(0, np.array([1000]))
    assert vm.mmu.sp_valid[1000 >> SPTE_SHIFT] and vm.mmu.n_leaf_pages == 1


# ------------------------------------------------------------------ TLB


def test_stale_tlb_entry_survives_protection_until_flush(make_vm):
    vm = make_vm("tdp", pages=PAGES, paused=True)
    gfns = np.arange(10, 20)
    vm.write(2, gfns)
    assert vm.tlbs.lookup(2, gfns).all()
    vm.mmu.rmap_write_protect(gfns)
    assert vm.tlbs.stale_writable(vm.mmu.spte_writable) == 10
    faults = vm.stats.write_faults
    vm.write(2, gfns)  # through the stale entries: no fault
    assert vm.stats.write_faults == faults
    vm.tlbs.flush_all()
    assert vm.tlbs.stale_writable(vm.mmu.spte_writable) == 0
    vm.write(2, gfns)
    assert vm.stats.write_faults == faults + 10


def test_tlb_evicts_round_robin(make_vm):
    vm = make_vm("tdp", pages=PAGES, tlb_entries=4, paused=True)
    vm.write(0, np.arange(6))
    cached = vm.tlbs.cached[0]
    assert cached.sum() == 4 and not cached[:2].any() and cached[2:6].all()
