"""Harvest strategies: the dirty sets they return, their counters and prices, mmu_lock and TLBs.

The truth is the per-page write counter: a page is dirty since the last harvest exactly
when its `write_count` moved. Counters are checked against quantities computed here from
the spte arrays (not from the rmap or the slot bitmap the strategies use).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from migrate import record
from vmmodel import CORRECT_STRATEGIES, STRATEGIES, CostTable, DirtyLogAudit, WorkloadSpec
from vmmodel.harvest import KernelWork
from vmmodel.layout import SPTE_SHIFT, SPTES_PER_PAGE, tdp_layout
from vmmodel.lock import MmuLock
from vmmodel.memory import KVM_MEM_LOG_DIRTY_PAGES, MemSlot
from vmmodel.mmu import Mmu
from vmmodel.pml import PML_ENTITY_NUM, PmlLog
from vmmodel.tlb import Tlbs

PAGES = 8192
HYP = settings(max_examples=25, deadline=None, derandomize=True,
               suppress_health_check=[HealthCheck.function_scoped_fixture,
                                      HealthCheck.too_slow])
# Distinct prices, so that a count charged at the wrong price shows.
ODD_COSTS = CostTable(get_dirty_log_ns=1901.0, bitmap_word_ns=1.3, shadow_page_visit_ns=23.0,
                      spte_visit_ns=0.7, rmap_lookup_ns=11.0, rmap_step_ns=5.5,
                      lock_acquire_ns=17.0, tlb_flush_ns=2203.0, tlb_flush_per_vcpu_ns=431.0)


def leaf_pages_mapping(vm, slot) -> int:
    """Shadow pages holding a present spte into `slot`, from the spte arrays."""
    mmu = vm.mmu
    ids = np.flatnonzero(mmu.spte_present & slot.contains(mmu.spte_gfn))
    return len(np.unique(ids >> SPTE_SHIFT))


def present_sptes_mapping(vm, gfns: np.ndarray) -> int:
    mmu = vm.mmu
    return int(np.count_nonzero(mmu.spte_present & np.isin(mmu.spte_gfn, gfns)))


def fully_mapped(make_vm, shape: str, **kw):
    """Every vCPU (so in shadow every process) wrote every page, then logging was enabled."""
    vm = make_vm(shape, pages=PAGES, logging=False, paused=True, **kw)
    for vcpu in range(vm.guest.vcpus):
        vm.write(vcpu, np.arange(vm.npages))
    vm.enable_dirty_logging()
    return vm


# ------------------------------------------------------------------ dirty sets


write_batches = st.lists(
    st.tuples(st.integers(0, 3),
              st.lists(st.integers(0, PAGES - 1), min_size=0, max_size=40)),
    max_size=5,
)


@pytest.mark.parametrize("shape,budget,pml", [("tdp", 0, False), ("tdp", 10, False),
                                              ("shadow", 0, False), ("shadow", 10, False),
                                              ("tdp", 0, True), ("tdp", 10, True)])
@HYP
@given(rounds=st.lists(write_batches, min_size=1, max_size=6))
def test_strategies_report_exactly_the_written_pages(make_vm, shape, budget, pml, rounds):
    vms = {name: make_vm(shape, pages=PAGES, max_mmu_pages=budget, paused=True, pml=pml)
           for name in CORRECT_STRATEGIES}
    for batches in rounds:
        sets = {}
        for name, vm in vms.items():
            before = vm.memory.write_count.copy()
            for vcpu, gfns in batches:
                vm.write(vcpu, np.array(gfns, dtype=np.int64))
            truth = np.flatnonzero(vm.memory.write_count != before)
            sets[name] = vm.harvest(0, name).gfns
            np.testing.assert_array_equal(sets[name], truth, err_msg=name)
            assert vm.slots[0].nr_dirty_pages == 0
        assert len({tuple(s) for s in sets.values()}) == 1


@pytest.mark.parametrize("shape,pml", [("tdp", False), ("shadow", False), ("tdp", True)])
@pytest.mark.parametrize("strategy", CORRECT_STRATEGIES)
def test_a_page_refaulted_after_a_zap_is_still_reported(make_vm, shape, pml, strategy):
    vm = make_vm(shape, pages=PAGES, max_mmu_pages=8, paused=True, pml=pml)
    gfn = 5
    vm.write(0, np.array([gfn]))
    assert vm.harvest(0, strategy).gfns.tolist() == [gfn]
    # Fault in pages elsewhere, one shadow page at a time, until gfn's page is zapped.
    for sp in range(1, 16):
        vm.write(0, np.array([sp * SPTES_PER_PAGE]))
    assert vm.stats.zapped_pages > 0
    assert vm.mmu.rmap_len[gfn] == 0  # no spte maps it any more
    vm.harvest(0, strategy)
    faults = vm.stats.page_faults
    vm.write(0, np.array([gfn]))
    assert vm.stats.page_faults == faults + 1  # re-faulted, not a write-protect fault
    assert gfn in vm.harvest(0, strategy).gfns


@pytest.mark.parametrize("pml", [False, True])
@pytest.mark.parametrize("strategy", CORRECT_STRATEGIES)
def test_a_dirty_page_zapped_before_the_harvest_is_still_reported(make_vm, strategy, pml):
    vm = make_vm("tdp", pages=PAGES, max_mmu_pages=8, paused=True, pml=pml)
    vm.write(0, np.array([5]))
    for sp in range(1, 16):
        vm.write(0, np.array([sp * SPTES_PER_PAGE]))
    assert not vm.mmu.sp_valid[0]
    assert 5 in vm.harvest(0, strategy).gfns


# ------------------------------------------------------------------ the heuristic


@pytest.mark.parametrize("shape", ["tdp", "shadow"])
def test_heuristic_picks_rmap_below_n_used_mmu_pages_and_walk_from_it(make_vm, shape):
    vm = fully_mapped(make_vm, shape)
    n_used = vm.mmu.n_used_mmu_pages
    assert n_used > 3
    rng = np.random.default_rng(1)
    for dirty, branch in [(1, "rmap"), (n_used - 1, "rmap"), (n_used, "walk"),
                          (n_used + 1, "walk"), (4 * n_used, "walk"), (0, "rmap")]:
        vm.write(0, rng.choice(PAGES, dirty, replace=False))
        result = vm.harvest(0, "heuristic")
        assert (result.nr_dirty_pages, result.n_used_mmu_pages) == (dirty, n_used)
        assert result.branch == branch, (dirty, n_used)
        assert len(result.gfns) == dirty
        assert vm.mmu.n_used_mmu_pages == n_used  # nothing faulted in or zapped


def test_heuristic_takes_rmap_for_a_small_framebuffer(make_vm):
    """Avi Kivity's remark: always true for VGA. A 1 MiB framebuffer beside a busy RAM."""
    parts = (WorkloadSpec(kind="uniform", rate=5e6), WorkloadSpec(kind="vga", fps=30.0))
    vm = make_vm("tdp", "mix", pages=65536, vga_pages=256, parts=parts, seed=2)
    assert vm.mmu.n_used_mmu_pages > 128
    vm.sync_dirty_log("heuristic")
    for _ in range(6):
        vm.advance(1e9 / 30)
        result = vm.sync_dirty_log("heuristic")
        ram, vga = result.branch.split("+")
        assert vga == "rmap"
        assert ram == "walk"  # RAM is dirtier than the shadow pages are many
    assert vm.slots[1].name == "vga"
    vga_only = vm.harvest(1, "heuristic")
    assert vga_only.branch == "rmap"


# ------------------------------------------------------------------ counters and prices


def expected_walk_ns(costs, r, words, vcpus):
    hold = (r.shadow_pages_visited * costs.shadow_page_visit_ns
            + r.sptes_visited * costs.spte_visit_ns)
    flush = r.tlb_flushes * (costs.tlb_flush_ns + costs.tlb_flush_per_vcpu_ns * vcpus)
    return (costs.get_dirty_log_ns + words * costs.bitmap_word_ns + hold + costs.lock_acquire_ns
            + flush), hold


def expected_rmap_ns(costs, r, ngfns, words, vcpus):
    hold = ngfns * 3 * costs.rmap_lookup_ns + r.rmap_steps * costs.rmap_step_ns  # 4K, 2M, 1G
    flush = r.tlb_flushes * (costs.tlb_flush_ns + costs.tlb_flush_per_vcpu_ns * vcpus)
    return (costs.get_dirty_log_ns + words * costs.bitmap_word_ns + hold
            + ngfns * costs.lock_acquire_ns + flush), hold


@pytest.mark.parametrize("shape", ["tdp", "shadow"])
def test_walk_counters_and_modeled_time(make_vm, shape):
    vm = fully_mapped(make_vm, shape, costs=ODD_COSTS)
    slot = vm.slots[0]
    vm.write(1, np.arange(0, PAGES, 97))
    n_used, leaves = vm.mmu.n_used_mmu_pages, leaf_pages_mapping(vm, slot)
    t0 = vm.now_ns
    r = vm.harvest(0, "walk")
    assert r.branch == "walk"
    assert r.shadow_pages_visited == n_used == r.n_used_mmu_pages
    assert r.sptes_visited == SPTES_PER_PAGE * leaves
    if shape == "shadow":  # the walk visits the processes' pages too, not just the slot's
        assert leaves > PAGES // SPTES_PER_PAGE
    assert (r.rmap_steps, r.lock_acquisitions, r.tlb_flushes) == (0, 1, 1)
    ns, hold = expected_walk_ns(ODD_COSTS, r, slot.bitmap_words, vm.guest.vcpus)
    assert r.kernel_ns == pytest.approx(ns)
    assert r.lock_hold_ns == pytest.approx(hold)
    assert vm.now_ns - t0 == pytest.approx(r.kernel_ns)  # the guest's clock moved with it
    assert record.to_dict(r)["modeled-ns"] == round(ns)  # the report's spelling, whole ns
    # Nothing writable any more: a second walk visits as much but needs no flush.
    again = vm.harvest(0, "walk")
    assert again.tlb_flushes == 0 and again.sptes_visited == r.sptes_visited
    assert again.kernel_ns == pytest.approx(
        expected_walk_ns(ODD_COSTS, again, slot.bitmap_words, vm.guest.vcpus)[0])


@pytest.mark.parametrize("shape", ["tdp", "shadow"])
def test_rmap_counters_and_modeled_time(make_vm, shape):
    vm = fully_mapped(make_vm, shape, costs=ODD_COSTS)
    slot = vm.slots[0]
    gfns = np.arange(3, PAGES, 61)
    vm.write(2, gfns)
    steps = present_sptes_mapping(vm, gfns)
    if shape == "shadow":
        assert steps > len(gfns)  # aliases: several sptes per gfn
    r = vm.harvest(0, "rmap")
    np.testing.assert_array_equal(r.gfns, gfns)
    assert r.branch == "rmap"
    assert r.rmap_steps == steps
    assert (r.sptes_visited, r.shadow_pages_visited) == (0, 0)
    assert (r.lock_acquisitions, r.tlb_flushes) == (len(gfns), 1)
    ns, hold = expected_rmap_ns(ODD_COSTS, r, len(gfns), slot.bitmap_words, vm.guest.vcpus)
    assert r.kernel_ns == pytest.approx(ns)
    assert r.lock_hold_ns == pytest.approx(hold)
    # Every spte of those gfns is read-only now, the others untouched.
    mapped = vm.mmu.spte_present & np.isin(vm.mmu.spte_gfn, gfns)
    assert not vm.mmu.spte_writable[mapped].any()


@pytest.mark.parametrize("strategy", CORRECT_STRATEGIES)
def test_an_empty_harvest_needs_no_flush(make_vm, strategy):
    vm = fully_mapped(make_vm, "tdp", costs=ODD_COSTS)
    r = vm.harvest(0, strategy)
    assert len(r.gfns) == 0 and r.tlb_flushes == 0
    words = vm.slots[0].bitmap_words
    base = ODD_COSTS.get_dirty_log_ns + words * ODD_COSTS.bitmap_word_ns
    if r.branch == "rmap":
        assert r.kernel_ns == pytest.approx(base) and r.lock_acquisitions == 0
    else:
        assert r.kernel_ns > base


def test_sync_merges_the_slots(make_vm):
    vm = make_vm("tdp", "vga", pages=PAGES, vga_pages=512, fps=1000.0, paused=False)
    vm.write(0, np.array([1, 2, 3]))
    vm.advance(3e6)
    pending = vm.dirty_pages_pending()
    result = vm.sync_dirty_log("rmap")
    assert len(result.gfns) == pending == result.nr_dirty_pages
    assert {1, 2, 3} <= set(result.gfns.tolist())
    assert (result.gfns >= PAGES).sum() == pending - 3
    assert result.branch == "rmap+rmap"


# ------------------------------------------------------------------ mmu_lock


FREE_FAULTS = CostTable(write_fault_ns=0.0, page_fault_ns=0.0)


def _stall_of(make_vm, strategy: str, costs=FREE_FAULTS) -> tuple[float, int, int]:
    """(vCPU stall, faults, writes) during one harvest of a 256 MiB guest writing 2 M/s."""
    vm = make_vm("tdp", "uniform", pages=65536, seed=11, rate=2e6, costs=costs)
    vm.advance(10e6)
    vm.sync_dirty_log("walk")
    vm.advance(10e6)
    stall, faults, writes = vm.stats.vcpu_stall_ns, vm.stats.faults, vm.stats.writes
    vm.harvest(0, strategy)
    return (vm.stats.vcpu_stall_ns - stall, vm.stats.faults - faults,
            vm.stats.writes - writes)


def test_a_walk_under_one_lock_hold_stalls_the_vcpus_longer_than_rmap(make_vm):
    walk_stall, walk_faults, _ = _stall_of(make_vm, "walk")
    rmap_stall, rmap_faults, _ = _stall_of(make_vm, "rmap")
    assert walk_faults > 0 and rmap_faults > 0  # the guest did fault during both
    assert walk_stall > 0
    assert walk_stall > rmap_stall


def test_vcpus_busy_with_faults_still_write_during_a_short_harvest(make_vm):
    """With the default costs this guest's vCPUs spend a large share of their time in
    write-protect faults. The model repays that debt at the pace it was run up (spread over a
    slice, not all first), so during a harvest far shorter than the debt they keep writing,
    at about the share of the rate they reach in the steady state, and some of those faults
    wait for mmu_lock.
    """
    rate = 2e6
    steady = make_vm("tdp", "uniform", pages=65536, seed=11, rate=rate)
    steady.advance(10e6)
    steady.sync_dirty_log("walk")
    writes = steady.stats.writes
    steady.advance(10e6)
    running_share = (steady.stats.writes - writes) / (rate * 10e6 / 1e9)
    assert 0.2 < running_share < 0.9  # the vCPUs are busy with faults, not idle, not free

    vm = make_vm("tdp", "uniform", pages=65536, seed=11, rate=rate)
    vm.advance(10e6)
    vm.sync_dirty_log("walk")
    fault_ns = vm.stats.fault_ns
    vm.advance(10e6)
    # The fault time each vCPU runs up per 1 ms slice, and repays over the next.
    debt_ns = (vm.stats.fault_ns - fault_ns) / (vm.guest.vcpus * 10)
    stall, faults, writes = vm.stats.vcpu_stall_ns, vm.stats.faults, vm.stats.writes
    harvest = vm.harvest(0, "walk")
    assert harvest.kernel_ns < debt_ns  # shorter than what every vCPU still owes
    harvest_writes = vm.stats.writes - writes
    expected = rate * harvest.kernel_ns / 1e9 * running_share
    assert harvest_writes == pytest.approx(expected, rel=0.35)
    assert vm.stats.faults > faults and vm.stats.vcpu_stall_ns > stall  # and some waited


def test_no_stall_while_the_lock_is_free(make_vm):
    vm = make_vm("tdp", "uniform", pages=PAGES, rate=2e6)
    stall = vm.stats.vcpu_stall_ns  # enabling dirty logging walks under the lock
    vm.advance(20e6)
    assert vm.stats.faults > 0 and vm.stats.vcpu_stall_ns == stall


# ------------------------------------------------------------------ the seed's TLB argument


def _spy_on_flush(monkeypatch, vm, armed=None):
    """Record, around each remote TLB flush, the stale entries (cached translations whose
    `armed` bit, W by default, the harvest cleared) and which pages were written."""
    seen = []
    original = KernelWork.flush_remote_tlbs
    armed = vm.mmu.spte_writable if armed is None else armed

    def spy(work):
        before = vm.memory.write_count.copy()
        stale = vm.tlbs.stale_writable(armed)
        original(work)
        seen.append((stale, np.flatnonzero(vm.memory.write_count != before)))

    monkeypatch.setattr(KernelWork, "flush_remote_tlbs", spy)
    return seen


@pytest.mark.parametrize("shape,pml", [("tdp", False), ("shadow", False), ("tdp", True)])
@pytest.mark.parametrize("strategy", ["rmap", "masked"])
def test_writes_through_stale_tlb_entries_hit_harvested_pages(make_vm, monkeypatch, shape, pml,
                                                              strategy):
    """The seed's argument, for rmap and for masked (whose flush also follows the protection):
    with PML a stale entry is one that still has the D bit the harvest cleared."""
    # 2048 pages written at 50 M/s: ~20 us between harvests dirties part of the working set,
    # and ~200 writes land inside the 4 us flush. Free faults keep the vCPUs running.
    vm = make_vm(shape, "uniform", pages=PAGES, seed=4, rate=5e7, working_set_pages=2048,
                 costs=CostTable(write_fault_ns=0.0, page_fault_ns=0.0), pml=pml)
    armed = vm.mmu.spte_dirty if pml else vm.mmu.spte_writable
    audit = DirtyLogAudit(vm)
    audit.read(vm.sync_dirty_log(strategy).gfns)
    seen = _spy_on_flush(monkeypatch, vm, armed)
    through_stale_total = 0
    for _ in range(20):
        vm.advance(20_000)
        seen.clear()
        result = vm.harvest(0, strategy)
        assert len(result.gfns) < 2048  # the harvested set is not the whole working set
        (stale, written), = seen
        assert stale > 0
        # Written during the flush without faulting or a log (no new dirty bit, nothing in a
        # PML buffer): through a stale entry.
        logged = vm.slots[0].dirty_bitmap[written]
        if pml:
            logged |= np.isin(written, vm.pml.pending())
        through_stale = written[~logged]
        assert np.isin(through_stale, result.gfns).all()
        through_stale_total += len(through_stale)
        audit.read(result.gfns)
        assert audit.unreported().size == 0
        assert vm.tlbs.stale_writable(armed) == 0  # flushed
    assert through_stale_total > 0


def test_rmap_noflush_leaves_stale_writable_tlb_entries(make_vm):
    vm = make_vm("tdp", "hotspot", pages=PAGES, seed=4, rate=4e6)
    vm.advance(5e6)
    result = vm.harvest(0, "rmap-noflush")
    assert result.tlb_flushes == 0 and len(result.gfns) > 0
    assert vm.tlbs.stale_writable(vm.mmu.spte_writable) > 0
    control = make_vm("tdp", "hotspot", pages=PAGES, seed=4, rate=4e6)
    control.advance(5e6)
    assert control.harvest(0, "rmap").tlb_flushes == 1
    assert control.tlbs.stale_writable(control.mmu.spte_writable) == 0


# ------------------------------------------------------------------ the harvest's view of KVM


class _StandInKvm:
    """The least a harvest needs (vmmodel.harvest.Kvm), without a Vm: no guest, no workload.

    The guest's time only records what the kernel asked for.
    """

    def __init__(self, npages: int, vcpus: int, costs: CostTable) -> None:
        layout = tdp_layout(npages)
        self.mmu = Mmu(layout, np.zeros(npages, dtype=np.uint8), max_mmu_pages=1 << 20)
        self.tlbs = Tlbs(vcpus, layout.n_sptes, entries=64)
        self.pml = None
        self.lock = MmuLock()
        self.costs = costs
        self.vcpus = vcpus
        self.now_ns = 0.0
        self.elapsed: list[float] = []

    def advance(self, dt_ns: float) -> None:
        self.elapsed.append(dt_ns)
        self.now_ns += dt_ns


@pytest.mark.parametrize("name", CORRECT_STRATEGIES)
def test_a_strategy_runs_on_a_stand_in_for_the_vm(name):
    kvm = _StandInKvm(PAGES, vcpus=3, costs=ODD_COSTS)
    slot = MemSlot(0, "ram", 0, PAGES)
    slot.flags |= KVM_MEM_LOG_DIRTY_PAGES
    written = np.array([5, 600, 601, 8000])
    kvm.mmu.fault_in(written)  # the guest wrote them: writable sptes, dirty bits
    slot.mark_page_dirty(written)
    work = KernelWork(kvm, slot, name)
    result = work.result(STRATEGIES[name](work))
    np.testing.assert_array_equal(result.gfns, written)
    assert not kvm.mmu.spte_writable[written].any()  # re-armed: the next write faults
    assert slot.nr_dirty_pages == 0
    assert result.tlb_flushes == 1
    # The guest ran for exactly the modeled kernel time, step by step.
    assert kvm.now_ns == pytest.approx(result.kernel_ns) and len(kvm.elapsed) >= 2
    assert ODD_COSTS.tlb_flush_cost_ns(3) in kvm.elapsed


@pytest.mark.parametrize("name", CORRECT_STRATEGIES)
def test_a_strategy_runs_on_a_stand_in_with_pml(name):
    """Kvm.pml given: the kick flushes what the buffers hold before the bitmap is taken, and
    the strategy clears D bits, not W bits."""
    kvm = _StandInKvm(PAGES, vcpus=3, costs=ODD_COSTS)
    slot = MemSlot(0, "ram", 0, PAGES)
    slot.flags |= KVM_MEM_LOG_DIRTY_PAGES
    kvm.pml = PmlLog(3, ODD_COSTS, slot.mark_page_dirty)
    kvm.pml.enabled = True
    faulted, logged = np.array([5, 600]), np.array([601, 8000, 8001])
    kvm.mmu.fault_in(np.concatenate([faulted, logged]))
    slot.mark_page_dirty(faulted)  # the faults set their bits; the others the CPU logged
    kvm.pml.log(2, logged)
    work = KernelWork(kvm, slot, name)
    result = work.result(STRATEGIES[name](work))
    np.testing.assert_array_equal(result.gfns, np.sort(np.concatenate([faulted, logged])))
    assert result.pml_flushed == len(logged) and kvm.pml.pending().size == 0
    written = np.concatenate([faulted, logged])
    assert not kvm.mmu.spte_dirty[written].any() and kvm.mmu.spte_writable[written].all()
    assert result.tlb_flushes == 1 and slot.nr_dirty_pages == 0
    assert 3 * ODD_COSTS.pml_kick_ns in kvm.elapsed  # the kick, before anything else
    assert kvm.pml.fill.sum() == 0 and PML_ENTITY_NUM == 512
