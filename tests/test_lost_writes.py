"""No lost write: the audit's invariant under every workload, both shapes (and tdp with PML),
the correct strategies.

The loop is the migration's, without the wire: the guest runs, a sync harvests every slot,
userspace reads (sends) the harvested pages. After each sync no page may have been written
since its last read without being dirty in a bitmap (or, with PML, logged in a vCPU's
buffer), and after the final sync with the guest paused no page may be stale. The broken
strategies must be caught, with the gfns named, on every MMU they run on.
"""

from __future__ import annotations

import numpy as np
import pytest

from vmmodel import (
    BROKEN_STRATEGIES,
    CORRECT_STRATEGIES,
    STRATEGIES,
    CostTable,
    DirtyLogAudit,
    WorkloadSpec,
)

PAGES = 8192
# The MMUs a strategy runs on: (shape, mmu.pml). PML exists on tdp only.
MMUS = {"tdp": ("tdp", False), "shadow": ("shadow", False), "tdp-pml": ("tdp", True)}


def mmus_of(strategy: str) -> list[str]:
    """The MMUs `strategy` runs on (one that needs PML: only tdp with PML)."""
    return [name for name, (_, pml) in MMUS.items() if pml or not STRATEGIES[strategy].needs_pml]


def strategy_mmus(strategies) -> list:
    return [pytest.param(s, m, id=f"{s}-{m}") for s in strategies for m in mmus_of(s)]

VGA_PAGES = 512
# With the default costs a vCPU repays its fault debt spread over the next slice, at the
# pace it ran it up, so it writes during a harvest at a reduced rate. Free faults keep the
# guest writing at its full rate inside every harvest, which is where the orderings matter.
COSTS = {"kvm-x86": CostTable(), "free-faults": CostTable(write_fault_ns=0.0, page_fault_ns=0.0)}

# Rates are high for so small a guest: harvests last microseconds, and writes must land
# inside them (between take, protect and flush) for the orderings to matter.
WORKLOADS: dict[str, dict] = {
    "idle": {"kind": "idle"},
    "uniform": {"kind": "uniform", "rate": 2e6},
    "hotspot": {"kind": "hotspot", "rate": 4e6, "hot_memory": 0.05},
    "zipf": {"kind": "zipf", "rate": 3e6, "exponent": 1.1},
    "sequential": {"kind": "sequential", "rate": 1e6},
    # A frame every 20 us, so that frames land inside harvests too.
    "vga": {"kind": "vga", "fps": 50_000.0, "region": 0.25, "vga_pages": VGA_PAGES},
    "phases": {
        "kind": "phases",
        "phases": (
            WorkloadSpec(kind="hotspot", rate=4e6, duration_ns=7_000_000),
            WorkloadSpec(kind="idle", duration_ns=3_000_000),
            WorkloadSpec(kind="sequential", rate=2e6, duration_ns=5_000_000),
        ),
    },
    "mix": {
        "kind": "mix",
        "vga_pages": VGA_PAGES,
        "parts": (
            WorkloadSpec(kind="zipf", rate=2e6),
            WorkloadSpec(kind="vga", fps=20_000.0, region=0.5),
        ),
    },
}


def migrate_rounds(vm, strategy: str, rounds: int = 8, dt_ns: float = 4e6):
    """Run the loop; return (per-round unreported gfns, stale gfns after the final sync,
    guest writes that happened inside the harvests)."""
    audit = DirtyLogAudit(vm)  # dirty logging is on: the first pass reads every page
    unreported = []
    during = 0
    for _ in range(rounds):
        vm.advance(dt_ns)
        writes = vm.stats.writes
        result = vm.sync_dirty_log(strategy)
        during += vm.stats.writes - writes
        audit.read(result.gfns)
        unreported.append(audit.unreported())
    vm.pause()
    audit.read(vm.sync_dirty_log(strategy).gfns)
    return unreported, audit.stale(), during


@pytest.mark.parametrize("costs", sorted(COSTS))
@pytest.mark.parametrize("workload", sorted(WORKLOADS))
@pytest.mark.parametrize("strategy,mmu", strategy_mmus(CORRECT_STRATEGIES))
def test_correct_strategies_lose_no_write(make_vm, workload, strategy, mmu, costs):
    shape, pml = MMUS[mmu]
    during = 0
    for seed in range(5):
        vm = make_vm(shape, pages=PAGES, seed=seed, costs=COSTS[costs], pml=pml,
                     strategy=strategy, **WORKLOADS[workload])
        writes_before = int(vm.memory.write_count.sum())
        unreported, stale, writes_in_harvests = migrate_rounds(vm, strategy)
        for i, lost in enumerate(unreported):
            assert lost.size == 0, f"seed {seed} round {i}: unreported {lost[:10].tolist()}"
        assert stale.size == 0, f"seed {seed}: stale after the final sync {stale[:10].tolist()}"
        if workload != "idle":  # the check is not vacuous: the guest wrote meanwhile
            assert int(vm.memory.write_count.sum()) > writes_before
        during += writes_in_harvests
    if workload != "idle" and costs == "free-faults":
        assert during > 0  # ...and some writes raced with the harvests


@pytest.mark.parametrize("strategy,mmu", strategy_mmus(CORRECT_STRATEGIES))
def test_correct_strategies_lose_no_write_while_shadow_pages_are_zapped(make_vm, strategy, mmu):
    shape, pml = MMUS[mmu]
    for seed in range(4):
        vm = make_vm(shape, "hotspot", pages=4 * PAGES, seed=seed, rate=2e6, hot_memory=0.1,
                     prefill=False, max_mmu_pages=12, pml=pml, strategy=strategy)
        unreported, stale, _ = migrate_rounds(vm, strategy, rounds=10)
        assert vm.stats.zapped_pages > 0
        assert all(lost.size == 0 for lost in unreported), f"seed {seed}"
        assert stale.size == 0, f"seed {seed}"


def _caught(make_vm, strategy: str, mmu: str, seeds=range(6)):
    """The first seed at which `strategy` loses a write: (seed, vm, audit, lost gfns), the
    guest still running if a sync's audit caught it, paused if only the final sync's did."""
    shape, pml = MMUS[mmu]
    for seed in seeds:
        vm = make_vm(shape, "hotspot", pages=PAGES, seed=seed, rate=4e6, hot_memory=0.05,
                     pml=pml, strategy=strategy)
        audit = DirtyLogAudit(vm)
        for _ in range(10):
            vm.advance(4e6)
            result = vm.sync_dirty_log(strategy)
            audit.read(result.gfns)
            lost = audit.unreported()
            if lost.size:
                return seed, vm, audit, lost
        vm.pause()
        audit.read(vm.sync_dirty_log(strategy).gfns)
        lost = audit.stale()
        if lost.size:
            return seed, vm, audit, lost
    return None


@pytest.mark.parametrize("strategy,mmu", strategy_mmus(BROKEN_STRATEGIES))
def test_broken_strategies_are_caught_and_the_lost_gfns_named(make_vm, strategy, mmu):
    caught = _caught(make_vm, strategy, mmu)
    assert caught is not None, f"{strategy} lost no write on {mmu}"
    seed, vm, audit, lost = caught
    # The named gfns really were written after their last read...
    assert (vm.memory.write_count[lost] > audit.read_version[lost]).all()
    # ...and no bitmap reports them.
    for slot in vm.slots:
        inside = lost[slot.contains(lost)]
        assert not slot.dirty_bitmap[inside - slot.base_gfn].any()
    # Finishing the migration with this strategy leaves them (at least) stale.
    if not vm.paused:
        vm.pause()
        audit.read(vm.sync_dirty_log(strategy).gfns)
    stale = audit.stale()
    assert stale.size > 0 and np.isin(lost, stale).any()


@pytest.mark.parametrize("mmu", ["tdp", "tdp-pml"])
def test_the_same_run_with_a_correct_strategy_loses_nothing(make_vm, mmu):
    """Control for the test above: same guest, seeds and loop, only the strategy differs."""
    for strategy in CORRECT_STRATEGIES:
        assert _caught(make_vm, strategy, mmu, seeds=range(3)) is None


def test_rmap_noflush_loses_writes_through_stale_tlb_entries(make_vm):
    vm = make_vm("tdp", "hotspot", pages=PAGES, seed=0, rate=4e6, hot_memory=0.05)
    audit = DirtyLogAudit(vm)
    vm.advance(4e6)
    audit.read(vm.sync_dirty_log("rmap-noflush").gfns)
    stale_entries = {v: np.flatnonzero(vm.tlbs.cached[v] & ~vm.mmu.spte_writable)
                     for v in range(vm.guest.vcpus)}
    assert sum(len(ids) for ids in stale_entries.values()) > 0
    vm.advance(4e6)
    audit.read(vm.sync_dirty_log("rmap-noflush").gfns)
    lost = audit.unreported()
    assert lost.size > 0
    # tdp: spte id == gfn; every lost page had a stale writable entry in some vCPU's TLB
    assert np.isin(lost, np.concatenate(list(stale_entries.values()))).all()
