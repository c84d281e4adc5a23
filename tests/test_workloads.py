"""Workloads: what each kind writes, at what rate, and what the guest's dirty set becomes.

The central check is the occupancy law: `uniform` at w writes/s over V pages for T seconds
dirties V(1 - e^(-wT/V)) distinct pages, measured as the harvested set of a running guest.
"""

from __future__ import annotations

import math
import warnings

import lz4.block
import numpy as np
import pytest

from vmmodel import SpecError, WorkloadSpec
from vmmodel.spec import DEFAULT_SLICE_NS, MAX_WRITE_RATE
from vmmodel.workloads import slice_write_ceiling

NS = 1_000_000_000


def distinct_after(vm, t_s: float) -> tuple[int, int]:
    """Arm tracking with one harvest, run `t_s`, harvest: (distinct pages, writes made)."""
    vm.sync_dirty_log("walk")
    writes = vm.stats.writes
    vm.advance(t_s * NS)
    return len(vm.sync_dirty_log("walk").gfns), vm.stats.writes - writes


@pytest.mark.parametrize("w,t_s", [(20_000, 0.5), (65_536, 1.0), (200_000, 0.5),
                                   (400_000, 1.0)])
def test_uniform_dirties_v_times_one_minus_e_to_the_minus_wt_over_v(make_vm, w, t_s):
    v = 65_536
    vm = make_vm("tdp", "uniform", pages=v, seed=7, rate=float(w))
    measured, writes = distinct_after(vm, t_s)
    expected = v * (1 - math.exp(-w * t_s / v))
    assert measured == pytest.approx(expected, rel=0.03)
    # Against the writes the vCPUs really made (faults slow them a little), tighter.
    assert measured == pytest.approx(v * (1 - (1 - 1 / v) ** writes), rel=0.01)
    assert writes == pytest.approx(w * t_s, rel=0.05)


def test_uniform_law_holds_on_shadow_paging_too(make_vm):
    v, w, t_s = 65_536, 65_536, 1.0
    vm = make_vm("shadow", "uniform", pages=v, seed=8, rate=float(w))
    measured, _ = distinct_after(vm, t_s)
    assert measured == pytest.approx(v * (1 - math.exp(-1)), rel=0.03)


def test_uniform_law_over_a_working_set(make_vm):
    vm = make_vm("tdp", "uniform", pages=65_536, seed=9, rate=16_384.0,
                 working_set_pages=16_384)
    measured, _ = distinct_after(vm, 1.0)
    assert measured == pytest.approx(16_384 * (1 - math.exp(-1)), rel=0.03)
    assert vm.memory.write_count[16_384:].sum() == 0  # nothing outside the working set


@pytest.mark.parametrize("advance", ["slices", "events"])
def test_results_do_not_depend_on_the_slice_size(make_vm, advance):
    sizes = []
    for slice_ns in (250_000, 1_000_000, 5_000_000):
        vm = make_vm("tdp", "uniform", pages=65_536, seed=3, rate=65_536.0, slice_ns=slice_ns,
                     advance=advance)
        sizes.append(distinct_after(vm, 1.0)[0])
    assert max(sizes) / min(sizes) < 1.02


def test_fractional_rates_carry_over_slices(make_vm):
    vm = make_vm("tdp", "uniform", pages=8192, rate=1_500.0, logging=False)  # 1.5 per slice
    vm.advance(NS)
    assert vm.stats.writes == 1_500


# ------------------------------------------------------------------ the other kinds


def writes_of(vm, t0_s: float, dt_s: float, activity: float = 1.0, seed: int = 0) -> np.ndarray:
    return vm.workload.generate(np.random.default_rng(seed), t0_s * NS, dt_s * NS, activity)


def test_idle_writes_nothing_after_its_prefill(make_vm):
    vm = make_vm("tdp", "idle", pages=8192, prefill=True)
    assert len(writes_of(vm, 0, 1.0)) == 0
    prefilled = vm.memory.write_count.copy()
    assert prefilled.sum() == 8192  # the working set, touched once
    vm.advance(NS)
    assert vm.stats.writes == 0 and np.array_equal(vm.memory.write_count, prefilled)


def test_prefill_is_each_parts_own_choice(make_vm):
    parts = (WorkloadSpec(kind="uniform", working_set_pages=1024, prefill=True),
             WorkloadSpec(kind="sequential", working_set_pages=4096, prefill=False))
    vm = make_vm("tdp", "mix", pages=8192, parts=parts)
    assert np.flatnonzero(vm.memory.write_count).tolist() == list(range(1024))
    vm = make_vm("tdp", "mix", pages=8192, parts=parts, prefill=False)
    assert vm.memory.write_count.sum() == 0


def test_hotspot_sends_hot_writes_to_hot_memory(make_vm):
    vm = make_vm("tdp", "hotspot", pages=65_536, rate=1e6, hot_writes=0.8, hot_memory=0.1,
                 logging=False)
    gfns = writes_of(vm, 0, 0.2)
    assert len(gfns) == 200_000
    hot = gfns < 6554
    # 80 % directly, plus the cold writes' 10 % chance of landing in hot memory anyway
    assert hot.mean() == pytest.approx(0.8 + 0.2 * 0.1, abs=0.01)
    cold = gfns[~hot]  # the rest spread uniformly over the other pages
    assert len(np.unique(cold)) == pytest.approx(
        (65_536 - 6554) * (1 - math.exp(-len(cold) / (65_536 - 6554))), rel=0.02)


def test_zipf_rank_frequencies_follow_the_exponent(make_vm):
    vm = make_vm("tdp", "zipf", pages=8192, rate=1e6, exponent=1.0, logging=False)
    gfns = writes_of(vm, 0, 1.0)
    counts = np.bincount(gfns, minlength=8192)
    top = np.sort(counts)[::-1]
    h = sum(1 / k for k in range(1, 8193))
    assert top[0] / len(gfns) == pytest.approx(1 / h, rel=0.02)
    assert top[0] / top[1] == pytest.approx(2.0, rel=0.05)
    assert vm.workload.rank_to_gfn[0] == np.argmax(counts)  # ranks are scattered, not gfn 0


def test_sequential_sweeps_the_working_set_in_order_and_wraps(make_vm):
    vm = make_vm("tdp", "sequential", pages=8192, rate=3000.0, working_set_pages=1000,
                 logging=False)
    a = writes_of(vm, 0, 0.5)  # 1500 pages
    b = writes_of(vm, 0.5, 0.5)
    np.testing.assert_array_equal(np.concatenate([a, b]), np.arange(3000) % 1000)


def test_vga_repaints_one_region_per_frame_in_the_framebuffer_slot(make_vm):
    vm = make_vm("tdp", "vga", pages=8192, vga_pages=1024, fps=10.0, region=0.25,
                 logging=False)
    vga = vm.slot(1)
    gfns = writes_of(vm, 0, 1.0)
    assert len(gfns) == 10 * 256  # 10 frames of a quarter of the framebuffer
    assert vga.contains(gfns).all()
    frames = gfns.reshape(10, 256)
    assert (np.diff(frames, axis=1) == 1).all()  # each frame paints a contiguous region
    starts = frames[:, 0] - vga.base_gfn
    assert starts.tolist() == [256, 512, 768, 0, 256, 512, 768, 0, 256, 512]
    assert len(writes_of(vm, 0.01, 0.05)) == 0  # no frame boundary in (10 ms, 60 ms]


def test_phases_run_in_turn_and_repeat(make_vm):
    phases = (WorkloadSpec(kind="uniform", rate=1e5, duration_ns=100_000_000,
                           working_set_pages=100),
              WorkloadSpec(kind="idle", duration_ns=300_000_000))
    vm = make_vm("tdp", "phases", pages=8192, phases=phases, logging=False)
    assert len(writes_of(vm, 0.0, 0.05)) == 5_000
    assert len(writes_of(vm, 0.15, 0.05)) == 0
    assert len(writes_of(vm, 0.42, 0.05)) == 5_000  # 420 ms is 20 ms into the second cycle
    assert (writes_of(vm, 0.41, 0.05) < 100).all()


def test_mix_runs_its_parts_at_once(make_vm):
    parts = (WorkloadSpec(kind="uniform", rate=1e4), WorkloadSpec(kind="vga", fps=10.0))
    vm = make_vm("tdp", "mix", pages=8192, vga_pages=512, parts=parts, logging=False)
    gfns = writes_of(vm, 0, 1.0)
    in_vga = vm.slot(1).contains(gfns)
    assert in_vga.sum() == 10 * 128 and (~in_vga).sum() == 10_000


@pytest.mark.parametrize("kind", ["uniform", "hotspot", "zipf", "sequential"])
def test_prefill_writes_the_working_set_with_text_like_content(make_vm, kind):
    vm = make_vm("tdp", kind, pages=8192, working_set_pages=3000, logging=False)
    assert (vm.memory.write_count[:3000] > 0).all() and vm.memory.write_count[3000:].sum() == 0
    assert vm.mmu.spte_present[:3000].all() and not vm.mmu.spte_present[3000:8192].any()
    assert vm.pages[:3000, 16:].any(axis=1).all()  # content beyond the stamp: no zero pages
    # Like a real guest's memory, the working set compresses about twofold with lz4.
    raw = vm.pages[:3000].tobytes()
    assert 1.5 < len(raw) / len(lz4.block.compress(raw, store_size=False)) < 3.0
    assert vm.stats.writes == 0  # prefill is not counted


def test_prefill_false_leaves_memory_untouched(make_vm):
    """WorkloadSpec.prefill=False ("touch the working set before dirty logging starts": no)
    must make Vm.prefill() a no-op; migrate's engine calls vm.prefill() unconditionally."""
    vm = make_vm("tdp", "uniform", pages=8192, prefill=False, logging=False)
    vm.prefill()
    assert vm.memory.write_count.sum() == 0
    assert not vm.mmu.spte_present.any()


# ------------------------------------------------------------------ throttle


@pytest.mark.parametrize("kind,extra", [("uniform", {"rate": 2e5}),
                                        ("zipf", {"rate": 2e5}),
                                        ("vga", {"vga_pages": 1024, "fps": 100.0})])
def test_a_throttle_of_half_halves_the_writes(make_vm, kind, extra):
    counts = []
    for throttle in (0.0, 0.5):
        vm = make_vm("tdp", kind, pages=8192, seed=5, logging=False, **extra)
        vm.set_throttle(throttle)
        vm.advance(NS)
        counts.append(vm.stats.writes)
    assert counts[0] > 0
    assert counts[1] / counts[0] == pytest.approx(0.5, abs=0.02)


def test_a_huge_zipf_exponent_puts_every_write_on_rank_one_without_a_warning(make_vm):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vm = make_vm("tdp", "zipf", pages=8192, rate=1e5, exponent=1e308, logging=False)
        gfns = writes_of(vm, 0, 0.01)
    assert len(gfns) == 1000 and (gfns == vm.workload.rank_to_gfn[0]).all()


def test_a_negative_zipf_exponent_is_a_spec_error():
    with pytest.raises(SpecError, match="workload.exponent"):
        WorkloadSpec(kind="zipf", exponent=-1.0)


# ------------------------------------------------------------------ bounded slices


def test_one_slice_writes_at_most_its_ceiling(make_vm):
    """1e9 writes/s over a 10 ms slice of a 1024-page guest would be 1e7 gfns (80 MB); the
    slice stops at its ceiling, which writes every page many times over already."""
    vm = make_vm("tdp", "uniform", pages=1024, rate=1e9, logging=False)
    gfns = writes_of(vm, 0, 10e-3)
    assert len(gfns) == slice_write_ceiling(1024) < 1e7
    assert len(np.unique(gfns)) == 1024
    # The spec's top rate in a default 1 ms slice is not cut.
    top = MAX_WRITE_RATE * DEFAULT_SLICE_NS / NS
    assert len(writes_of(vm, 0, DEFAULT_SLICE_NS / NS)) == top


def test_a_huge_fps_repaints_the_framebuffer_within_the_ceiling(make_vm):
    """fps=1e7 puts 10,000 frames (1.3 M gfns) in a 1 ms slice; the slice paints the same
    pages from its last frames. (fps=1e9 was ~8 GB of gfns; fps=1e300 overflowed.)"""
    vm = make_vm("tdp", "vga", pages=8192, vga_pages=512, fps=1e7, region=0.25,
                 logging=False)
    gfns = writes_of(vm, 0.5, 1e-3)
    assert len(gfns) <= slice_write_ceiling(512) < 10_000 * 128
    np.testing.assert_array_equal(np.unique(gfns), np.arange(8192, 8192 + 512))
    few = writes_of(vm, 0.5, 3 / 1e7)  # three frames: three regions, as before the ceiling
    assert len(few) == 3 * 128
    huge = make_vm("tdp", "vga", pages=8192, vga_pages=512, fps=1e300, logging=False)
    gfns = writes_of(huge, 0.5, 1e-3)
    assert len(gfns) <= slice_write_ceiling(512) and len(np.unique(gfns)) == 512
