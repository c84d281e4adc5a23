"""The event-driven guest (`guest.advance = "events"`) against the sliced reference.

Between two events that change the MMU the dirty set does not depend on how the stretch
is cut, so the guest may generate a stretch in long chunks. What must hold: the same
figures as the sliced guest within noise (writes, faults, the dirty set at each sync,
lock stalls), no chunk across a phase change or past its write bound, chunks short again
after every event, and far fewer steps than slices where the vCPUs are not busy faulting.
"""

from __future__ import annotations

import numpy as np
import pytest

from vmmodel import CostTable, GuestSpec, MmuSpec, Vm, WorkloadSpec
from vmmodel.spec import NS_PER_S, SpecError
from vmmodel.vm import CHUNK_WRITES, MAX_CHUNK_LOAD

MS = 1_000_000


def _engine_like(vm: Vm, syncs: int = 6, steps: int = 25, step_ns: float = 8 * MS,
                 strategy: str = "walk") -> list[int]:
    """Advance batch by batch (8 ms, a 1 MiB batch at 128 MiB/s) and sync now and then,
    as the migration does; return each sync's dirty-page count."""
    dirty = []
    for _ in range(syncs):
        for _ in range(steps):
            vm.advance(step_ns)
        dirty.append(len(vm.sync_dirty_log(strategy).gfns))
    return dirty


def _twin(advance: str, kind: str, pages: int, rate: float, shape: str = "tdp",
          seed: int = 1, **workload) -> Vm:  # workload: WorkloadSpec's other fields
    mmu = (MmuSpec(shape="shadow", address_spaces=4, mapped_pages=1024) if shape == "shadow"
           else MmuSpec())
    guest = GuestSpec(memory_pages=pages, advance=advance,
                      workload=WorkloadSpec(kind=kind, rate=rate, **workload))
    vm = Vm(guest, mmu, CostTable(), seed)
    vm.prefill()
    vm.enable_dirty_logging()
    return vm


# Fault-heavy and fault-light guests, both shapes, every rate-driven kind: measured with
# tools like this one at MAX_CHUNK_LOAD = 0.1, they agreed within 0.5 % (dirty sets) and
# 0.2 % (writes, faults); the bounds leave room for other seeds.
CASES = [
    ("hotspot", 65_536, 2e6, "tdp", {}),
    ("uniform", 65_536, 2e6, "tdp", {}),
    ("uniform", 262_144, 25_000, "tdp", {}),
    ("hotspot", 1 << 20, 100_000, "tdp", {"working_set_pages": 3 << 18}),
    ("uniform", 65_536, 5e5, "shadow", {}),
    ("zipf", 65_536, 1e6, "tdp", {}),
    ("sequential", 65_536, 3e5, "tdp", {}),
]


@pytest.mark.parametrize("kind,pages,rate,shape,workload", CASES,
                         ids=[f"{c[0]}-{c[3]}-{c[2]:g}" for c in CASES])
def test_the_event_driven_guest_agrees_with_the_sliced_one(kind, pages, rate, shape, workload):
    sliced = _twin("slices", kind, pages, rate, shape, **workload)
    events = _twin("events", kind, pages, rate, shape, **workload)
    dirty_s, dirty_e = _engine_like(sliced), _engine_like(events)
    for i, (a, b) in enumerate(zip(dirty_s, dirty_e, strict=True)):
        assert b == pytest.approx(a, rel=0.02, abs=20), f"sync {i}: {dirty_s} vs {dirty_e}"
    assert events.stats.writes == pytest.approx(sliced.stats.writes, rel=0.01)
    assert events.stats.faults == pytest.approx(sliced.stats.faults, rel=0.02)
    assert events.stats.fault_ns == pytest.approx(sliced.stats.fault_ns, rel=0.02)
    assert events.mmu.check_consistency() == []


# Throttled (QEMU's schedule: sleep, then 10 ms of run per period) at 20 %, then 70 % from
# the next tick, a cpu guest and a paced one that catches up after each sleep. Measured on
# every case above, seeds 1 to 4, at 20 % then 70 % (and seed 1 at 20 % then 50 %, 60 %
# then 90 %): dirty sets within 1.2 % (beyond the 20 pages of slack), writes within 0.1 %,
# faults within 0.5 %.
THROTTLED = [CASES[0], CASES[2], CASES[4], CASES[6]]


@pytest.mark.parametrize("pacing", ["cpu", "paced"])
@pytest.mark.parametrize("kind,pages,rate,shape,workload", THROTTLED,
                         ids=[f"{c[0]}-{c[3]}-{c[2]:g}" for c in THROTTLED])
def test_throttled_the_event_driven_guest_agrees_with_the_sliced_one(
        kind, pages, rate, shape, workload, pacing):
    runs = {}
    for advance in ("slices", "events"):
        vm = _twin(advance, kind, pages, rate, shape, pacing=pacing, **workload)
        vm.advance(3.3 * MS)  # the throttle's ticks fall between slices
        vm.set_throttle(0.2)
        dirty = _engine_like(vm, syncs=3)
        vm.set_throttle(0.7)  # from the next tick
        dirty += _engine_like(vm, syncs=3)
        runs[advance] = vm, dirty
    (sliced, dirty_s), (events, dirty_e) = runs["slices"], runs["events"]
    for i, (a, b) in enumerate(zip(dirty_s, dirty_e, strict=True)):
        assert b == pytest.approx(a, rel=0.02, abs=20), f"sync {i}: {dirty_s} vs {dirty_e}"
    assert events.stats.writes == pytest.approx(sliced.stats.writes, rel=0.01)
    assert events.stats.faults == pytest.approx(sliced.stats.faults, rel=0.02)
    assert events.stats.fault_ns == pytest.approx(sliced.stats.fault_ns, rel=0.02)
    assert events.mmu.check_consistency() == []


def test_lock_stalls_agree_with_the_sliced_guest():
    """Faults that wait for mmu_lock during the harvests: about as long in both."""
    stalls = {}
    for advance in ("slices", "events"):
        vm = _twin(advance, "uniform", 65_536, 2e6)
        _engine_like(vm, strategy="rmap")
        stalls[advance] = vm.stats.vcpu_stall_ns
    assert stalls["slices"] > 0
    assert stalls["events"] == pytest.approx(stalls["slices"], rel=0.1)


def test_a_light_guest_runs_in_far_fewer_steps_than_slices(monkeypatch):
    """The default's 25,000 writes/s on 1 GiB: the vCPUs lose well under MAX_CHUNK_LOAD to
    faults, so an 8 ms batch is about one chunk, where slices take eight."""
    counts = {}
    for advance in ("slices", "events"):
        vm = _twin(advance, "hotspot", 262_144, 25_000, working_set_pages=196_608)
        calls = []
        generate = vm.workload.generate
        monkeypatch.setattr(vm.workload, "generate",
                            lambda *a, _g=generate, _c=calls: _c.append(a[2]) or _g(*a))
        _engine_like(vm)
        counts[advance] = len(calls)
    assert counts["slices"] >= 6 * 25 * 8
    assert counts["events"] <= counts["slices"] / 4


def _chunks(vm: Vm, monkeypatch) -> list[tuple[float, float]]:
    seen: list[tuple[float, float]] = []
    generate = vm.workload.generate

    def spy(rng, t_ns, dt_ns, activity):
        seen.append((t_ns, dt_ns))
        return generate(rng, t_ns, dt_ns, activity)

    monkeypatch.setattr(vm.workload, "generate", spy)
    return seen


def test_chunks_start_at_a_slice_after_an_event_and_double_while_faults_are_cheap(
        make_vm, monkeypatch):
    vm = make_vm("tdp", "uniform", pages=8192, rate=1_000.0)
    slice_ns = vm.guest.slice_ns
    seen = _chunks(vm, monkeypatch)
    vm.advance(15 * slice_ns)
    assert [dt for _, dt in seen] == [slice_ns * k for k in (1, 2, 4, 8)]
    seen.clear()
    vm.sync_dirty_log("walk")  # an event: what it protected faults from now on
    vm.advance(3 * slice_ns)
    assert [dt for _, dt in seen][-2:] == [slice_ns, 2 * slice_ns]
    # Chunks, not writes: just throttled, the vCPUs sleep first (2.5 ms at 20 %) and write
    # nothing, but the chunk is a slice all the same. (The throttle last: its sleeps would
    # cut the chunks after the others.)
    steps: list[float] = []
    run_slice = vm._run_slice
    monkeypatch.setattr(vm, "_run_slice", lambda t, dt, *a, **k: steps.append(dt)
                        or run_slice(t, dt, *a, **k))
    for event in (vm.pause, vm.resume, lambda: vm.set_throttle(0.2)):
        event()
        steps.clear()
        vm.advance(slice_ns)
        if not vm.paused:
            assert steps == [slice_ns]


def test_chunks_stay_at_a_slice_while_faults_cost_the_vcpus_much(make_vm, monkeypatch):
    """Every write a fresh fault at 2e6 writes/s: the vCPUs lose far more than
    MAX_CHUNK_LOAD, so the chunks stay one slice long, as the sliced guest's."""
    vm = make_vm("tdp", "sequential", pages=1 << 18, rate=2e6)
    seen = _chunks(vm, monkeypatch)
    vm.advance(20 * vm.guest.slice_ns)
    assert vm.stats.fault_ns / vm.guest.vcpus > MAX_CHUNK_LOAD * vm.now_ns / 2
    assert {dt for _, dt in seen} == {float(vm.guest.slice_ns)}


def test_no_chunk_crosses_a_phase_change(monkeypatch):
    phases = (WorkloadSpec(kind="uniform", rate=1e4, duration_ns=7 * MS),
              WorkloadSpec(kind="idle", duration_ns=3 * MS),
              WorkloadSpec(kind="uniform", rate=5e4, duration_ns=11 * MS))
    guest = GuestSpec(memory_pages=8192,
                      workload=WorkloadSpec(kind="phases", phases=phases, prefill=False))
    vm = Vm(guest, MmuSpec(), CostTable(write_fault_ns=0.0, page_fault_ns=0.0), 0)
    vm.enable_dirty_logging()
    seen = []
    for child in vm.workload.children:
        generate = child.generate
        monkeypatch.setattr(child, "generate", lambda rng, t, dt, a, _g=generate, _c=child:
                            seen.append((t, dt, _c)) or _g(rng, t, dt, a))
    vm.advance(100 * MS)
    assert vm.now_ns == pytest.approx(100 * MS)
    ends = np.cumsum([7, 3, 11]) * MS
    for t, dt, child in seen:
        cycle = t % ends[-1]
        index = int(np.searchsorted(ends, cycle, side="right"))
        assert vm.workload.children[index] is child
        assert cycle + dt <= ends[index] + 1e-3, (t, dt)  # ends at or before its phase's end
    covered = sum(dt for _, dt, _ in seen)
    assert covered == pytest.approx(100 * MS)


def test_a_chunk_holds_at_most_chunk_writes(make_vm, monkeypatch):
    vm = make_vm("tdp", "uniform", pages=1 << 16, rate=1e8,
                 costs=CostTable(write_fault_ns=0.0, page_fault_ns=0.0))
    seen = _chunks(vm, monkeypatch)
    vm.advance(50 * MS)
    longest = max(dt for _, dt in seen)
    assert longest * vm.workload.writes_per_s(0) / NS_PER_S <= CHUNK_WRITES * (1 + 1e-9)
    assert vm.stats.writes == pytest.approx(1e8 * 0.05, rel=1e-3)  # no write dropped


def test_shadow_processes_rotate_by_time_within_a_long_chunk(make_vm):
    """A chunk over several quanta of `guest.slice`: each write goes through the process its
    vCPU runs in that write's quantum, as slices would have it."""
    vm = make_vm("shadow", "uniform", pages=8192, rate=1e3)
    roots, q = vm.mmu.layout.roots, vm.guest.slice_ns
    procs = vm._processes(1, 0.0, 4 * q, 8)
    assert procs.tolist() == [(1 + k // 2) % roots for k in range(8)]
    assert vm._processes(2, 5 * q + 10, q / 2, 100) == (2 + 5) % roots  # within one quantum


def test_phase_changes_are_events():
    phases = (WorkloadSpec(kind="uniform", rate=1e3, duration_ns=2 * MS),
              WorkloadSpec(kind="idle", duration_ns=5 * MS))
    guest = GuestSpec(memory_pages=1024, workload=WorkloadSpec(kind="phases", phases=phases))
    workload = Vm(guest, MmuSpec(), CostTable(), 0).workload
    assert workload.next_change_ns(0.0) == 2 * MS
    assert workload.next_change_ns(2 * MS) == 7 * MS
    assert workload.next_change_ns(8 * MS) == 9 * MS  # the next cycle's first change
    assert workload.writes_per_s(1 * MS) == 1e3 and workload.writes_per_s(3 * MS) == 0.0


def test_advance_is_events_or_slices():
    assert GuestSpec().advance == "events"
    with pytest.raises(SpecError, match="guest.advance"):
        GuestSpec(advance="ticks")
