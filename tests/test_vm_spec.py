"""Parameter objects and the Vm's contract: validation that names the field, round trips
through plain dicts, determinism for a seed, and errors for bad input."""

from __future__ import annotations

import ast
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vmmodel
from vmmodel import (
    BROKEN_STRATEGIES,
    CORRECT_STRATEGIES,
    STRATEGIES,
    CostTable,
    GuestSpec,
    GuestStats,
    HarvestResult,
    MmuSpec,
    SpecError,
    Vm,
    WorkloadSpec,
)
from vmmodel.vm import MAX_SLICES_PER_ADVANCE, GuestInterrupted

# ------------------------------------------------------------------ validation names the field

BAD_SPECS = [
    (lambda: WorkloadSpec(kind="bursty"), "workload.kind"),
    (lambda: WorkloadSpec(rate=-1.0), "workload.rate"),
    (lambda: WorkloadSpec(working_set_pages=-5), "workload.working-set"),
    (lambda: WorkloadSpec(hot_writes=0.0), "workload.hot-writes"),
    (lambda: WorkloadSpec(hot_memory=1.5), "workload.hot-memory"),
    (lambda: WorkloadSpec(region=0.0), "workload.region"),
    (lambda: WorkloadSpec(fps=0.0), "workload.fps"),
    (lambda: WorkloadSpec(kind="phases"), "workload.phases"),
    (lambda: WorkloadSpec(kind="phases", phases=(WorkloadSpec(),)), "workload.phases"),
    (lambda: WorkloadSpec(kind="phases", phases=(
        WorkloadSpec(kind="phases", duration_ns=1,
                     phases=(WorkloadSpec(duration_ns=1),)),)), "workload.phases"),
    (lambda: WorkloadSpec(kind="mix"), "workload.parts"),
    (lambda: WorkloadSpec(kind="mix", parts=(WorkloadSpec(kind="mix", parts=(WorkloadSpec(),)),)),
     "workload.parts"),
    (lambda: GuestSpec(memory_pages=100), "guest.memory"),
    (lambda: GuestSpec(vcpus=0), "guest.vcpus"),
    (lambda: GuestSpec(vcpus=257), "guest.vcpus"),
    (lambda: GuestSpec(vga_pages=-1), "guest.vga-memory"),
    (lambda: GuestSpec(slice_ns=0), "guest.slice"),
    (lambda: GuestSpec(workload=WorkloadSpec(kind="vga")), "guest.workload"),
    (lambda: MmuSpec(shape="nested"), "mmu.shape"),
    (lambda: MmuSpec(max_mmu_pages=-1), "mmu.max-mmu-pages"),
    (lambda: MmuSpec(tlb_entries=0), "mmu.tlb-entries"),
    (lambda: MmuSpec(address_spaces=0), "mmu.address-spaces"),
    (lambda: MmuSpec(address_spaces=65), "mmu.address-spaces"),
    (lambda: MmuSpec(mapped_pages=-1), "mmu.mapped-pages"),
    (lambda: MmuSpec(shared=1.5), "mmu.shared"),
    (lambda: MmuSpec(shared=math.nan), "mmu.shared"),
    (lambda: CostTable(spte_visit_ns=-1.0), "costs.spte_visit_ns"),
    (lambda: CostTable(tlb_flush_ns=math.nan), "costs.tlb_flush_ns"),
    (lambda: CostTable.from_dict({"spte_ns": 1.0}), "spte_ns"),
    (lambda: GuestSpec.from_dict({"memory": 1}), "memory"),
    (lambda: MmuSpec.from_dict({"strategy": "walk", "flush": True}), "flush"),
    (lambda: WorkloadSpec.from_dict({"kind": "uniform", "rates": 5}), "rates"),
]


@pytest.mark.parametrize("build,field", BAD_SPECS, ids=[f for _, f in BAD_SPECS])
def test_spec_errors_name_the_bad_field(build, field):
    with pytest.raises(SpecError, match=field.replace(".", r"\.")):
        build()


@pytest.mark.parametrize("build,field", [
    (lambda: WorkloadSpec(rate=math.nan), "workload.rate"),
    (lambda: WorkloadSpec(rate=math.inf), "workload.rate"),
    (lambda: WorkloadSpec(fps=math.nan), "workload.fps"),
    (lambda: WorkloadSpec(kind="zipf", exponent=math.nan), "workload.exponent"),
], ids=["rate-nan", "rate-inf", "fps-nan", "exponent-nan"])
def test_non_finite_numbers_are_rejected_too(build, field):
    """TOML has `nan` and `inf`. `rate = nan` passes `rate < 0` and only fails later, in the
    middle of a run, with "cannot convert float NaN to integer"."""
    with pytest.raises(SpecError, match=field.replace(".", r"\.")):
        build()


def test_an_unknown_strategy_is_a_spec_error_naming_it():
    with pytest.raises(SpecError, match=r"mmu\.strategy: 'fast'"):
        Vm(GuestSpec(memory_pages=1024), MmuSpec(strategy="fast"), CostTable(), seed=0)


def test_a_vga_workload_needs_the_framebuffer_even_inside_a_mix():
    parts = (WorkloadSpec(kind="uniform"), WorkloadSpec(kind="vga"))
    with pytest.raises(SpecError, match=r"guest\.workload"):
        GuestSpec(memory_pages=1024, workload=WorkloadSpec(kind="mix", parts=parts))


def test_specs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        MmuSpec().shape = "shadow"


# ------------------------------------------------------------------ round trips


finite = st.floats(min_value=1e-3, max_value=1e9, allow_nan=False)
unit = st.floats(min_value=1e-3, max_value=1.0)
simple_workloads = st.builds(
    WorkloadSpec,
    kind=st.sampled_from(["idle", "uniform", "hotspot", "zipf", "sequential"]),
    rate=finite, working_set_pages=st.integers(0, 1 << 20), prefill=st.booleans(),
    hot_writes=unit, hot_memory=unit, exponent=st.floats(0.1, 3.0), fps=finite,
    region=unit, duration_ns=st.integers(1, 10**10),
)
workloads = st.one_of(
    simple_workloads,
    st.builds(lambda ps: WorkloadSpec(kind="phases", phases=tuple(ps)),
              st.lists(simple_workloads, min_size=1, max_size=3)),
    st.builds(lambda ps: WorkloadSpec(kind="mix", parts=tuple(ps)),
              st.lists(simple_workloads, min_size=1, max_size=3)),
)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(workload=workloads, vcpus=st.integers(1, 256), pages=st.integers(512, 1 << 24),
       vga=st.integers(0, 1 << 14), slice_ns=st.integers(10_000, 10**9))
def test_guest_and_workload_round_trip_through_json(workload, vcpus, pages, vga, slice_ns):
    guest = GuestSpec(memory_pages=pages, vcpus=vcpus, vga_pages=vga, slice_ns=slice_ns,
                      workload=workload)
    again = GuestSpec.from_dict(json.loads(json.dumps(guest.to_dict())))
    assert again == guest
    assert WorkloadSpec.from_dict(workload.to_dict()) == workload


@settings(max_examples=40, deadline=None, derandomize=True)
@given(shape=st.sampled_from(["tdp", "shadow"]), strategy=st.sampled_from(sorted(STRATEGIES)),
       budget=st.integers(0, 10**6), tlb=st.integers(1, 4096), spaces=st.integers(1, 64),
       mapped=st.integers(0, 10**6), shared=st.floats(0.0, 1.0))
def test_mmu_spec_round_trips(shape, strategy, budget, tlb, spaces, mapped, shared):
    spec = MmuSpec(shape=shape, strategy=strategy, max_mmu_pages=budget, tlb_entries=tlb,
                   address_spaces=spaces, mapped_pages=mapped, shared=shared)
    assert MmuSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_cost_table_round_trips_and_prices_a_flush():
    costs = CostTable(name="test", spte_visit_ns=0.5, tlb_flush_ns=1000.0,
                      tlb_flush_per_vcpu_ns=250.0)
    assert CostTable.from_dict(json.loads(json.dumps(costs.to_dict()))) == costs
    assert costs.tlb_flush_cost_ns(4) == 2000.0
    assert set(costs.to_dict()) == {f.name for f in dataclasses.fields(CostTable)}


def test_the_shipped_cost_table_prices_every_counted_operation():
    import pathlib
    import tomllib

    path = pathlib.Path(__file__).parents[1] / "configs" / "costs" / "kvm-x86.toml"
    data = tomllib.loads(path.read_text())
    assert set(data) == {f.name for f in dataclasses.fields(CostTable)}
    assert CostTable.from_dict(data).name == "kvm-x86"


# ------------------------------------------------------------------ determinism


def _run(seed: int, shape: str, strategy: str):
    guest = GuestSpec(memory_pages=8192, workload=WorkloadSpec(kind="hotspot", rate=1e6))
    mmu = MmuSpec(shape=shape, address_spaces=4, mapped_pages=1024, max_mmu_pages=20)
    vm = Vm(guest, mmu, CostTable(), seed=seed)
    vm.prefill()
    vm.enable_dirty_logging()
    results = []
    for _ in range(5):
        vm.advance(3e6)
        results.append(vm.sync_dirty_log(strategy))
    return vm, results


def _counters(r: HarvestResult) -> dict:
    d = dataclasses.asdict(r)
    d.pop("wall_ns")
    d["gfns"] = r.gfns.tolist()
    return d


@pytest.mark.parametrize("shape", ["tdp", "shadow"])
@pytest.mark.parametrize("strategy", CORRECT_STRATEGIES)  # every correct one, from the registry
def test_same_seed_same_guest(shape, strategy):
    a, ra = _run(3, shape, strategy)
    b, rb = _run(3, shape, strategy)
    np.testing.assert_array_equal(a.memory.write_count, b.memory.write_count)
    assert np.array_equal(a.pages, b.pages)
    assert [_counters(r) for r in ra] == [_counters(r) for r in rb]
    assert a.stats == b.stats and a.now_ns == b.now_ns
    c, _ = _run(4, shape, strategy)  # and the seed matters
    assert not np.array_equal(a.memory.write_count, c.memory.write_count)


# ------------------------------------------------------------------ the Vm's contract


def test_write_rejects_gfns_outside_guest_memory(make_vm):
    vm = make_vm("tdp", pages=1024, vga_pages=512, paused=True)
    assert vm.npages == 1536
    vm.write(0, np.array([1535]))  # the framebuffer is guest memory too
    for bad in ([1536], [-1], [3, 10**6]):
        with pytest.raises(ValueError, match="outside guest memory"):
            vm.write(0, np.array(bad))
    assert vm.write(0, np.array([], dtype=np.int64)) == (0, 0)


def test_write_reports_write_protect_and_page_faults(make_vm):
    vm = make_vm("tdp", pages=1024, paused=True)
    assert vm.write(0, np.array([1, 2, 2, 3])) == (0, 3)  # first touch: page faults
    assert vm.write(1, np.array([1, 2])) == (0, 0)  # writable now
    vm.harvest(0, "walk")
    assert vm.write(1, np.array([1, 2, 4])) == (2, 1)


def test_unknown_strategy_at_harvest_is_a_key_error(make_vm):
    vm = make_vm("tdp", pages=1024, paused=True)
    with pytest.raises(KeyError):
        vm.harvest(0, "nope")


def test_a_paused_guest_writes_nothing(make_vm):
    vm = make_vm("tdp", "uniform", pages=1024, rate=1e6, paused=True)
    writes, now = vm.stats.writes, vm.now_ns  # (the guest ran while logging was enabled)
    vm.advance(1e8)
    assert vm.stats.writes == writes and vm.now_ns == now + 1e8
    vm.resume()
    vm.advance(1e7)
    assert vm.stats.writes - writes == pytest.approx(1e4, rel=0.1)


def test_pages_carry_their_gfn_and_write_count(make_vm):
    vm = make_vm("tdp", pages=1024, paused=True)
    vm.write(0, np.array([7, 9]))
    vm.write(0, np.array([9]))
    words = vm.pages.view(np.uint64)
    assert words[7, :2].tolist() == [7, 1] and words[9, :2].tolist() == [9, 2]
    assert vm.memory.write_count[[7, 9]].tolist() == [1, 2]


# ------------------------------------------------------------------ the public surface


def _vmmodel_imports_in_migrate() -> set[tuple[str, str]]:
    """(module, name) for every `from vmmodel... import name` in migrate/."""
    root = Path(__file__).resolve().parent.parent / "migrate"
    found = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vmmodel"):
                found |= {(node.module, alias.name) for alias in node.names}
    return found


def test_vmmodel_exports_every_name_migrate_imports():
    imported = _vmmodel_imports_in_migrate()
    assert ("vmmodel", "Vm") in imported  # the scan sees migrate's imports
    missing = sorted(name for _, name in imported if name not in vmmodel.__all__)
    assert missing == []
    for name in vmmodel.__all__:
        assert hasattr(vmmodel, name)


def test_the_registry_flags_split_the_strategies_in_two():
    assert set(CORRECT_STRATEGIES) | set(BROKEN_STRATEGIES) == set(STRATEGIES)
    assert not set(CORRECT_STRATEGIES) & set(BROKEN_STRATEGIES)
    assert {"walk", "rmap", "heuristic"} <= set(CORRECT_STRATEGIES) and BROKEN_STRATEGIES
    # (tests/test_lost_writes.py shows the flags true: each broken one loses writes)


def test_migrate_reads_shadow_pages_and_sets_the_throttle_through_vm(make_vm):
    vm = make_vm("tdp", "uniform", pages=8192, rate=1e6)
    assert vm.n_used_mmu_pages == vm.mmu.n_used_mmu_pages > 0
    vm.set_throttle(0.5)
    assert vm.throttle == 0.5
    for bad in (-0.1, 1.0, math.nan):
        with pytest.raises(ValueError, match="throttle"):
            vm.set_throttle(bad)
    assert vm.throttle == 0.5


def test_prefill_maps_the_working_set_in_every_guest_process(make_vm):
    """Shadow shape: each process's own sptes for the prefilled pages exist after prefill."""
    vm = make_vm("shadow", "uniform", pages=8192, rate=1e3, logging=False, paused=True)
    as_map = vm.mmu.layout.address_space_map
    for process in range(vm.mmu.layout.roots):
        ids = as_map[process][as_map[process] >= 0]
        assert len(ids) and vm.mmu.spte_present[ids].all(), process
    assert vm.stats == GuestStats()  # the prefill is before the migration: not counted


# ------------------------------------------------------------------ long stretches


def _slices_counted(vm, monkeypatch) -> list[float]:
    """The length of every slice the workload is asked for, from now on."""
    seen: list[float] = []
    generate = vm.workload.generate

    def spy(rng, t_ns, dt_ns, activity):
        seen.append(dt_ns)
        if len(seen) > MAX_SLICES_PER_ADVANCE:  # the old slice-by-slice loop: stop it here
            raise AssertionError("more slices than one advance may run")
        return generate(rng, t_ns, dt_ns, activity)

    monkeypatch.setattr(vm.workload, "generate", spy)
    return seen


def test_a_huge_elapse_runs_a_bounded_number_of_slices(make_vm, monkeypatch):
    """A 1e13 ns harvest step (a cost of 1e13) was 1e10 slices of synchronous code, deaf to
    SIGINT; now it is at most MAX_SLICES_PER_ADVANCE longer slices, each write-bounded.
    (A low rate keeps the test short: each slice still writes rate x its length.)"""
    vm = make_vm("tdp", "uniform", pages=2048, rate=2_000.0)
    start = vm.now_ns
    slices = _slices_counted(vm, monkeypatch)
    vm.advance(1e13)
    assert vm.now_ns == start + 1e13
    assert 0 < len(slices) <= MAX_SLICES_PER_ADVANCE
    assert vm.dirty_pages_pending() == 2048  # ten thousand seconds: every page written
    vm.pause()
    paused = len(slices)
    vm.advance(1e15)  # a paused guest's time moves in one step, whatever its length
    assert len(slices) == paused and vm.now_ns == start + 1e13 + 1e15
    with pytest.raises(ValueError, match="cannot advance"):
        vm.advance(math.inf)


def _twins(make_vm, **kw):
    build = dict(pages=2048, slice_ns=10_000, seed=4,
                 costs=CostTable(write_fault_ns=0.0, page_fault_ns=0.0), **kw)
    return make_vm("tdp", **build), make_vm("tdp", **build)


@pytest.mark.parametrize("kind,extra", [("idle", {}), ("uniform", {"rate": 1e6})])
def test_a_long_stretch_agrees_with_slice_by_slice(make_vm, kind, extra):
    """4x the slice ceiling in one call (longer slices) against the same time in short calls
    (every slice 10 us): the same time, writes and, for a guest that writes, the same
    saturated dirty set; for an idle one, everything."""
    coarse, fine = _twins(make_vm, kind=kind, **extra)
    stretch = 4 * MAX_SLICES_PER_ADVANCE * 10_000
    coarse.advance(stretch)
    for _ in range(4 * MAX_SLICES_PER_ADVANCE // 64):
        fine.advance(64 * 10_000)
    assert coarse.now_ns == pytest.approx(fine.now_ns) and coarse.now_ns >= stretch
    assert coarse.stats.writes == pytest.approx(fine.stats.writes, abs=1)
    assert coarse.dirty_pages_pending() == fine.dirty_pages_pending()
    if kind == "idle":
        assert coarse.stats == fine.stats
        np.testing.assert_array_equal(coarse.memory.write_count, fine.memory.write_count)


@pytest.mark.parametrize("advance,steps", [("slices", (1, 2, 3)), ("events", (1, 3, 7))])
def test_should_stop_is_asked_between_steps(make_vm, advance, steps):
    """A long stretch stops at the first step boundary after its caller says stop (Ctrl-C
    in the CLI), leaving the model whole: time and writes end on that step. Slices are one
    `guest.slice` each; event-driven chunks double from one slice while the vCPUs lose
    little to faults (none here: free faults), so the third ends at 7 slices."""
    vm = make_vm("tdp", "uniform", pages=2048, rate=2_000.0, advance=advance,
                 costs=CostTable(write_fault_ns=0.0, page_fault_ns=0.0))
    start, slice_ns = vm.now_ns, vm.guest.slice_ns
    asked = []
    vm.should_stop = lambda: asked.append(vm.now_ns) or len(asked) >= 3
    with pytest.raises(GuestInterrupted):
        vm.advance(1e9)
    assert asked == [start + k * slice_ns for k in steps]
    assert vm.now_ns == start + steps[-1] * slice_ns
    assert vm.mmu.check_consistency() == []
