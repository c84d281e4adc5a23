"""QEMU's throttle schedule and how a guest meets it (`pacing`, `max-lag`).

Throttled at p, the vCPUs sleep 10 ms x p / (1 - p) at each tick of QEMU's timer and run
until the next, 10 ms / (1 - p) later (cpu_throttle_timer_tick, cpu_throttle_thread). A
`cpu` guest writes in proportion to the time it runs, (1 - p) of its rate; a `paced` one
writes at its rate while it runs and, woken, first what it owes for the sleep, at most
`max-lag` of it: its full rate while the sleep is within max-lag, (10 ms + max-lag) / T
beyond.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from migrate.config import ConfigError, load_scenario, scenario_from_dict
from vmmodel import CostTable, SpecError, WorkloadSpec
from vmmodel.vm import CPU_THROTTLE_TIMESLICE_NS, ThrottleSchedule
from vmmodel.workloads import OWED_PIECE_WRITES

MS = 1_000_000
NS_PER_S = 1_000_000_000
FREE = CostTable(write_fault_ns=0.0, page_fault_ns=0.0)  # writes that cost no vCPU time


def _periods(schedule: ThrottleSchedule, end_ns: float):
    """Every (tick, wake, next tick) of `schedule` up to `end_ns`, one period at a time."""
    if schedule.head is not None:
        yield schedule.head
    period, sleep = schedule.period_ns, schedule.sleep_ns
    k = 0
    while schedule.start_ns + k * period < end_ns:
        tick = schedule.start_ns + k * period
        yield tick, tick + sleep, tick + period
        k += 1


def _brute_running(schedule: ThrottleSchedule, t_ns: float, end_ns: float) -> float:
    """Run time in [t_ns, end_ns), period by period."""
    return sum(max(0.0, min(end_ns, stop) - max(t_ns, wake))
               for _, wake, stop in _periods(schedule, end_ns))


def _brute_wakes(schedule: ThrottleSchedule, t_ns: float, end_ns: float) -> int:
    return sum(t_ns <= wake < end_ns for _, wake, _ in _periods(schedule, end_ns))


shares = st.one_of(st.integers(1, 99).map(lambda pct: pct / 100),  # QEMU's percentages
                   st.floats(0.001, 0.995))


# ------------------------------------------------------------------ the schedule


def test_the_schedule_is_qemus():
    """In QEMU's whole nanoseconds: the period 10 ms / (1 - p) truncated, the sleep
    `(int64_t)(p / (1 - p) * 10 ms + 1)`, so a vCPU runs 1 ns short of 10 ms a period."""
    s = ThrottleSchedule(0.2, 0.0)
    assert CPU_THROTTLE_TIMESLICE_NS == 10 * MS
    assert (s.period_ns, s.sleep_ns) == (12.5 * MS, 2.5 * MS + 1)
    assert (ThrottleSchedule(0.5, 0.0).period_ns, ThrottleSchedule(0.5, 0.0).sleep_ns) == (
        20 * MS, 10 * MS + 1)
    # 1 - 0.99 is 0.010000000000000009 in a double: 999,999,999 ns, and a sleep of 990 ms.
    assert (ThrottleSchedule(0.99, 0.0).period_ns, ThrottleSchedule(0.99, 0.0).sleep_ns) == (
        1000 * MS - 1, 990 * MS)
    # Sleep first, then run: nothing in the first 2.5 ms, all of the rest to 12.5 ms.
    wake = 2.5 * MS + 1
    assert s.running_ns(0.0, wake) == 0.0
    assert s.running_ns(wake, 12.5 * MS) == 10 * MS - 1
    assert s.asleep_until(1 * MS) == wake and s.asleep_until(wake) is None
    assert s.running_until(wake) == 12.5 * MS and s.running_until(12.5 * MS) is None
    assert s.wakes(0.0, 30 * MS) == [(27.5 * MS + 1, wake, 3)]  # at 2.5, 15 and 27.5 ms
    assert ThrottleSchedule().running_ns(5.0, 17.0) == 12.0  # unthrottled: all of it


@settings(max_examples=300, deadline=None)
@given(share=shares, start=st.floats(0, 1e10), offset=st.floats(0, 5e9),
       length=st.floats(1, 3e10))
def test_running_time_over_any_chunk_is_the_sum_period_by_period(share, start, offset, length):
    s = ThrottleSchedule(share, start)
    t, end = start + offset, start + offset + length
    assert s.running_ns(t, end) == pytest.approx(_brute_running(s, t, end), rel=1e-9, abs=1e-3)
    found = s.wakes(t, end)
    assert sum(n for _, _, n in found) == _brute_wakes(s, t, end)
    for last, sleep, _ in found:  # the last wake in the chunk, after its sleep
        assert t <= last < end and sleep == pytest.approx(s.sleep_ns)


@settings(max_examples=200, deadline=None)
@given(first=shares, second=shares, start=st.floats(0, 1e10), change=st.floats(0, 3e9),
       offset=st.floats(0, 3e9), length=st.floats(1, 1e10))
def test_after_a_change_the_running_time_is_still_the_sum_period_by_period(
        first, second, start, change, offset, length):
    s = ThrottleSchedule(first, start).changed(second, start + change)
    t = start + change + offset
    end = t + length
    assert s.running_ns(t, end) == pytest.approx(_brute_running(s, t, end), rel=1e-9, abs=1e-3)
    assert sum(n for _, _, n in s.wakes(t, end)) == _brute_wakes(s, t, end)


@settings(max_examples=200, deadline=None)
@given(share=shares, cuts=st.lists(st.floats(0, 5e9), min_size=1, max_size=30))
def test_consecutive_chunks_count_each_wake_once(share, cuts):
    """Cut anywhere, on wakes and ticks too: the chunks add up to the whole."""
    s = ThrottleSchedule(share, 123.0)
    bounds = sorted({123.0, 5e9, *(123.0 + c for c in cuts),
                     *(s.start_ns + s.sleep_ns + k * s.period_ns for k in range(3)),
                     *(s.start_ns + k * s.period_ns for k in range(3))})
    pairs = list(zip(bounds, bounds[1:], strict=False))
    assert sum(s.running_ns(a, b) for a, b in pairs) == pytest.approx(
        s.running_ns(bounds[0], bounds[-1]), rel=1e-9, abs=1e-3)
    assert sum(n for a, b in pairs for _, _, n in s.wakes(a, b)) == _brute_wakes(
        s, bounds[0], bounds[-1])


def test_a_new_share_while_throttling_takes_effect_at_the_next_tick():
    """cpu_throttle_set ticks at once only when it turns the throttle on; while throttling
    it arms no timer, so the period in progress runs out as its tick set it (QEMU 7.2 to 10.2:
    "if (!throttle_active) cpu_throttle_timer_tick(NULL)")."""
    s = ThrottleSchedule().changed(0.5, 0.0)  # on: ticks at 0, 20, 40 ms; sleeps 10 ms each
    assert (s.start_ns, s.head) == (0.0, None)
    s = s.changed(0.9, 25 * MS)  # in the period from 20 ms: it sleeps to 30, runs to 40
    assert s.head == (20 * MS, 30 * MS + 1, 40 * MS) and s.start_ns == 40 * MS
    assert s.running_ns(25 * MS, 40 * MS) == 10 * MS - 1
    assert s.running_ns(40 * MS, 130 * MS) == 0.0  # then 90 ms asleep, 10 ms running
    assert s.running_ns(130 * MS + 1, 140 * MS) == 10 * MS - 1
    assert s.running_ns(25 * MS, 1040 * MS) == pytest.approx(20 * MS + 9 * 10 * MS, abs=20)
    assert s.wakes(25 * MS, 140 * MS) == [(30 * MS + 1, 10 * MS + 1, 1),
                                          (130 * MS + 1, 90 * MS + 1, 1)]
    again = s.changed(0.6, 35 * MS)  # still in that period: only the next share changes
    assert (again.head, again.start_ns, again.share) == (s.head, s.start_ns, 0.6)
    assert s.changed(0.9, 50 * MS) is s  # the same share: nothing happens
    assert s.changed(0.0, 50 * MS) == ThrottleSchedule()  # off: the vCPUs run at once


def test_set_throttle_starts_the_schedule_when_it_turns_the_throttle_on(make_vm):
    vm = make_vm("tdp", "uniform", pages=8192, rate=1e5, logging=False, costs=FREE)
    vm.advance(7.3 * MS)
    vm.set_throttle(0.5)
    assert vm.throttle == 0.5 and vm.throttle_schedule.start_ns == vm.now_ns
    before = vm.stats.writes
    vm.advance(10 * MS)  # asleep
    assert vm.stats.writes == before
    vm.advance(10 * MS)  # running
    assert vm.stats.writes - before == pytest.approx(1e5 * 0.01, abs=1)
    vm.set_throttle(0.5)  # the engine sets the same share after every sync: no restart
    assert vm.throttle_schedule.start_ns == pytest.approx(vm.now_ns - 20 * MS)
    vm.set_throttle(0.0)
    before = vm.stats.writes
    vm.advance(10 * MS)  # would have slept
    assert vm.stats.writes - before == pytest.approx(1e5 * 0.01, abs=1)


# ------------------------------------------------------------------ how much a guest writes


def _rate_written(make_vm, share: float, advance: str, periods: int = 20, rate: float = 1e5,
                  kind: str = "uniform", **workload) -> float:
    """The share of its rate a guest wrote over whole throttle periods (faults cost nothing,
    so only the throttle slows it)."""
    vm = make_vm("tdp", kind, pages=8192, rate=rate, logging=False, costs=FREE,
                 advance=advance, **workload)
    vm.advance(3.3 * MS)
    vm.set_throttle(share)
    before, start = vm.stats.writes, vm.now_ns
    span = periods * vm.throttle_schedule.period_ns
    for _ in range(periods * 4):  # the engine's way: in batches, here a quarter period
        vm.advance(span / (periods * 4))
    assert vm.now_ns == pytest.approx(start + span)
    per_s = vm.workload.writes_per_s(start)
    return (vm.stats.writes - before) / (per_s * span / NS_PER_S)


@pytest.mark.parametrize("advance", ["slices", "events"])
@pytest.mark.parametrize("share", [0.2, 0.5, 0.9, 0.99])
def test_a_cpu_guest_writes_one_minus_p_of_its_rate(make_vm, advance, share):
    assert _rate_written(make_vm, share, advance) == pytest.approx(1 - share, abs=2e-4)


@pytest.mark.parametrize("advance", ["slices", "events"])
@pytest.mark.parametrize("share", [0.2, 0.5, 0.9])  # sleeps of 2.5, 10 and 90 ms
def test_a_paced_guest_writes_its_full_rate_while_its_sleeps_are_within_max_lag(
        make_vm, advance, share):
    assert _rate_written(make_vm, share, advance, pacing="paced") == pytest.approx(1, abs=2e-4)


@pytest.mark.parametrize("advance", ["slices", "events"])
@pytest.mark.parametrize("share,lag_ms", [(0.99, 100), (0.95, 100), (0.9, 40), (0.5, 0)])
def test_beyond_max_lag_a_paced_guest_writes_10_ms_plus_max_lag_per_period(
        make_vm, advance, share, lag_ms):
    """At 99 % and 100 ms: (10 + 100) / 1000, 11 % of its rate. A lag of 0 is a cpu guest."""
    period_ms = 10 / (1 - share)
    expected = (10 + lag_ms) / period_ms
    written = _rate_written(make_vm, share, advance, periods=4 if share > 0.9 else 20,
                            pacing="paced", max_lag_ns=lag_ms * MS)
    assert written == pytest.approx(expected, abs=2e-4)
    if (share, lag_ms) == (0.99, 100):
        assert written == pytest.approx(0.11, abs=2e-4)


@pytest.mark.parametrize("advance", ["slices", "events"])
def test_a_paced_display_repaints_the_frames_of_its_sleeps(make_vm, advance):
    common = dict(kind="vga", vga_pages=1024, fps=100.0, periods=10)
    cpu = _rate_written(make_vm, 0.5, advance, **common)
    paced = _rate_written(make_vm, 0.5, advance, pacing="paced", **common)
    assert cpu == pytest.approx(0.5, abs=0.02)
    assert paced == pytest.approx(1.0, abs=0.02)


def test_each_part_of_a_mix_and_each_phase_has_its_own_pacing(make_vm):
    parts = (WorkloadSpec(kind="uniform", rate=1e5), WorkloadSpec(
        kind="uniform", rate=1e5, pacing="paced", max_lag_ns=20 * MS))
    vm = make_vm("tdp", "mix", pages=8192, logging=False, costs=FREE, parts=parts)
    paced = vm.workload.parts[1]
    counts = {"cpu": 0, "paced": 0}
    for part, name in zip(vm.workload.parts, counts, strict=True):
        generate, owed = part.generate, part.owed
        part.generate = lambda *a, _g=generate, _n=name: _count(counts, _n, _g(*a))
        part.owed = lambda *a, _o=owed, _n=name: (_count(counts, _n, w) for w in _o(*a))
    vm.set_throttle(0.9)  # sleeps of 90 ms: the paced part catches up 20 ms of each
    vm.advance(10 * vm.throttle_schedule.period_ns)
    assert counts["cpu"] == pytest.approx(1e5 * 0.1, abs=2)
    assert counts["paced"] == pytest.approx(1e5 * 0.3, abs=2)
    assert paced.spec.pacing == "paced"
    phases = (WorkloadSpec(kind="uniform", rate=1e5, duration_ns=500 * MS, pacing="paced"),
              WorkloadSpec(kind="uniform", rate=1e5, duration_ns=500 * MS))
    vm = make_vm("tdp", "phases", pages=8192, logging=False, costs=FREE, phases=phases)
    vm.set_throttle(0.5)
    vm.advance(500 * MS)
    assert vm.stats.writes == pytest.approx(1e5 * 0.5, abs=2)  # paced: all of it
    vm.advance(500 * MS)
    assert vm.stats.writes == pytest.approx(1e5 * 0.75, abs=2)  # then cpu: half


def _count(counts: dict, name: str, gfns: np.ndarray) -> np.ndarray:
    counts[name] += len(gfns)
    return gfns


@pytest.mark.parametrize("advance", ["slices", "events"])
def test_a_catch_up_past_a_slice_s_ceiling_keeps_every_write_in_bounded_arrays(
        make_vm, advance, monkeypatch):
    """2e7 writes/s owe 2e6 writes per 100 ms of lag, twice a slice's ceiling (the arrays of
    a catch-up are of OWED_PIECE_WRITES), and no write is dropped."""
    vm = make_vm("tdp", "uniform", pages=1024, rate=2e7, logging=False, costs=FREE,
                 advance=advance, pacing="paced")
    longest = []
    translate = vm._translate_writes
    monkeypatch.setattr(vm, "_translate_writes",
                        lambda vcpu, g, p=None: longest.append(len(g)) or translate(vcpu, g, p))
    vm.set_throttle(0.99)
    vm.advance(vm.throttle_schedule.period_ns)
    assert vm.stats.writes == pytest.approx(2e7 * 0.11, abs=2)
    assert max(longest) <= OWED_PIECE_WRITES


def test_a_sleeping_vcpu_repays_no_fault_debt(make_vm):
    """Fault time is repaid from running time only: not during a sleep, then at the wake."""
    phases = (WorkloadSpec(kind="sequential", rate=1e6, duration_ns=100 * MS),
              WorkloadSpec(kind="idle", duration_ns=1000 * MS))
    vm = make_vm("tdp", "phases", pages=1 << 16, phases=phases)
    vm.set_throttle(0.9)  # 90 ms asleep, then 10 ms of faults on fresh pages
    vm.advance(100 * MS)
    debt = vm._debt_ns.copy()
    assert debt.min() > 0
    vm.advance(90 * MS)  # asleep (and idle from now on)
    np.testing.assert_array_equal(vm._debt_ns, debt)
    vm.advance(1 * MS)  # awake: a slice of repayment
    assert (vm._debt_ns < debt).all()


def test_unthrottled_a_paced_guest_is_a_cpu_guest(make_vm):
    gfns = []
    for pacing in ("cpu", "paced"):
        vm = make_vm("tdp", "hotspot", pages=8192, rate=3e5, seed=4, pacing=pacing)
        vm.advance(50 * MS)
        vm.set_throttle(0.3)
        vm.set_throttle(0.0)  # and off again: it runs at once, as if never throttled
        vm.advance(50 * MS)
        gfns.append((vm.stats.writes, vm.stats.faults, vm.sync_dirty_log("walk").gfns))
    assert gfns[0][:2] == gfns[1][:2]
    np.testing.assert_array_equal(gfns[0][2], gfns[1][2])


# ------------------------------------------------------------------ the keys


def test_the_keys_default_to_a_cpu_guest_and_100_ms():
    w = load_scenario(None).guest.workload
    assert (w.pacing, w.max_lag_ns) == ("cpu", 100 * MS)
    assert WorkloadSpec().pacing == "cpu"


def test_the_keys_load_and_round_trip_in_parts_and_phases():
    s = load_scenario(None, [
        "guest.vga=true", "guest.workload.kind=mix",
        "guest.workload.parts=[{kind='uniform', pacing='paced', max-lag='250ms'}, "
        "{kind='phases', phases=[{kind='zipf', duration='1s', pacing='paced'}]}, "
        "{kind='vga', pacing='paced', max-lag='0'}]"])
    uniform, phases, vga = s.guest.workload.parts
    assert (uniform.pacing, uniform.max_lag_ns) == ("paced", 250 * MS)
    assert (phases.phases[0].pacing, phases.phases[0].max_lag_ns) == ("paced", 100 * MS)
    assert (vga.pacing, vga.max_lag_ns) == ("paced", 0)
    data = s.to_dict()
    assert scenario_from_dict(data) == s
    parts = data["guest"]["workload"]["parts"]
    assert parts[0]["pacing"] == "paced" and parts[0]["max-lag"] == "250ms"
    assert "max-lag" not in parts[1]["phases"][0]  # at its default


def test_at_their_defaults_the_keys_are_not_written():
    """So a run that leaves them alone resolves as before they existed: the reports, and a
    sweep's stored points, are unchanged."""
    workload = load_scenario(None).to_dict()["guest"]["workload"]
    assert "pacing" not in workload and "max-lag" not in workload
    lag = load_scenario(None, ["guest.workload.max-lag=1s"]).to_dict()["guest"]["workload"]
    assert lag["max-lag"] == "1s" and "pacing" not in lag


@pytest.mark.parametrize("override,message", [
    ("guest.workload.pacing=lazy", r"guest\.workload\.pacing: 'lazy' is not one of cpu, paced"),
    ("guest.workload.pacing=1", r"guest\.workload\.pacing"),
    ("guest.workload.max-lag=11s", r"guest\.workload\.max-lag: 11s is not in 0s\.\.10s"),
    ("guest.workload.max-lag=-1ms", r"guest\.workload\.max-lag: .*negative"),
    ("guest.workload.max-lag=100", r"guest\.workload\.max-lag: .*needs a unit"),
    ("guest.workload.max-lag=1.5ns", r"guest\.workload\.max-lag"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_scenario(None, [override])


@pytest.mark.parametrize("kind,children", [
    ("mix", "guest.workload.parts=[{kind='uniform'}]"),
    ("phases", "guest.workload.phases=[{kind='uniform', duration='1s'}]"),
])
@pytest.mark.parametrize("key", ["pacing=paced", "max-lag=1s"])
def test_a_phases_or_mix_table_has_no_pacing_of_its_own(kind, children, key):
    with pytest.raises(ConfigError, match=rf"guest\.workload\.pacing: a '{kind}' workload "
                                          "has none of its own"):
        load_scenario(None, [f"guest.workload.kind={kind}", children, f"guest.workload.{key}"])


def test_a_bad_phase_names_the_phase():
    with pytest.raises(ConfigError, match=r"guest\.workload\.phases\[0\]\.pacing: 'fast'"):
        load_scenario(None, ["guest.workload.kind=phases",
                             "guest.workload.phases=[{kind='uniform', duration='1s', "
                             "pacing='fast'}]"])


@pytest.mark.parametrize("fields,message", [
    ({"pacing": "bursty"}, "workload.pacing"),
    ({"max_lag_ns": -1}, "workload.max-lag"),
    ({"max_lag_ns": 10 * NS_PER_S + 1}, "workload.max-lag"),
])
def test_the_spec_refuses_bad_values(fields, message):
    with pytest.raises(SpecError, match=message):
        WorkloadSpec(kind="uniform", **fields)
    assert math.isfinite(WorkloadSpec.MAX_LAG_NS) and "paced" in WorkloadSpec.PACINGS


@pytest.mark.parametrize("advance", ["slices", "events"])
@pytest.mark.parametrize("pacing,owed_ms", [("cpu", 0), ("paced", 100)])
def test_held_vcpus_write_nothing_then_a_paced_guest_catches_up_max_lag(
        make_vm, advance, pacing, owed_ms):
    """QEMU's BQL held by a sync under TCG (`Vm.hold_vcpus`): 400 ms without a write; a
    paced guest then writes what it owes for the last max-lag (100 ms) of it, at once."""
    vm = make_vm("tdp", "uniform", pages=8192, rate=1e5, logging=False, costs=FREE,
                 advance=advance, pacing=pacing)
    vm.advance(3.3 * MS)
    before, start = vm.stats.writes, vm.now_ns
    vm.hold_vcpus(400 * MS)
    assert vm.now_ns == pytest.approx(start + 400 * MS)
    assert vm.stats.writes - before == pytest.approx(1e5 * owed_ms / 1e3, abs=2)
    vm.advance(100 * MS)  # then it runs on at its rate
    assert vm.stats.writes - before == pytest.approx(1e5 * (owed_ms + 100) / 1e3, abs=3)


@pytest.mark.parametrize("advance", ["slices", "events"])
@pytest.mark.parametrize("hold_at_ms,hold_ms", [(2.0, 5.0), (6.0, 4.0)])
def test_a_hold_that_meets_a_throttle_sleep_is_one_outage(make_vm, advance, hold_at_ms,
                                                          hold_ms):
    """At 50 % a vCPU sleeps 10 ms and runs 10 ms from each tick. A hold inside a sleep
    adds nothing to the sleep's catch-up; a hold across the wake extends the sleep into
    one outage, caught up once, when the vCPU runs again. Either way a paced guest
    writes its full rate (every outage is within max-lag)."""
    vm = make_vm("tdp", "uniform", pages=8192, rate=1e5, logging=False, costs=FREE,
                 advance=advance, pacing="paced")
    vm.set_throttle(0.5)  # tick now: asleep for 10 ms, then 10 ms of run
    before, start = vm.stats.writes, vm.now_ns
    vm.advance(hold_at_ms * MS)
    vm.hold_vcpus(hold_ms * MS)
    vm.advance(start + 200 * MS - vm.now_ns)
    assert vm.stats.writes - before == pytest.approx(1e5 * 0.2, abs=5)
