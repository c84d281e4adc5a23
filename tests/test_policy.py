"""QEMU's loop decisions per version, precopy's own bound, and auto-converge, as functions."""

from __future__ import annotations

import pytest

from migrate.source.bitmap import MigrationBitmap
from migrate.source.counters import MigrationCounters
from migrate.source.policy import (
    AutoConverge,
    Decision,
    can_complete,
    give_up,
    has_periodic_sync,
    should_sync,
)

S = 1_000_000_000
MS = 1_000_000


def test_sync_only_below_the_threshold():
    assert should_sync(29_999_999, 30e6) and not should_sync(30_000_000, 30e6)
    assert not should_sync(0, 0.0)  # threshold 0 until the first window closes


@pytest.mark.parametrize("version", ["7.2", "9.2"])
def test_before_10_2_complete_below_the_threshold_or_with_nothing_pending(version):
    assert can_complete(version, 29_999_999, 30e6)
    assert not can_complete(version, 30_000_000, 30e6)
    assert can_complete(version, 0, 0.0)  # `!pending_size`
    assert not can_complete(version, 1, 0.0)


def test_10_2_completes_at_most_the_threshold():
    assert can_complete("10.2", 30_000_000, 30e6)  # `<=`: the one case that differs
    assert not can_complete("10.2", 30_000_001, 30e6)
    assert can_complete("10.2", 0, 0.0)


def test_the_periodic_sync_is_9_2_and_later():
    assert not has_periodic_sync("7.2")
    assert has_periodic_sync("9.2") and has_periodic_sync("10.2")


def test_give_up_at_max_iterations_or_max_time():
    limits = {"max_iterations": 5, "max_time_ns": 60 * S}
    assert give_up(syncs_after_setup=4, elapsed_ns=S, **limits,
                   on_no_convergence="force") is Decision.CONTINUE
    assert give_up(syncs_after_setup=5, elapsed_ns=S, **limits,
                   on_no_convergence="force") is Decision.FORCE
    assert give_up(syncs_after_setup=1, elapsed_ns=60 * S, **limits,
                   on_no_convergence="cancel") is Decision.CANCEL


def _ac(**kw) -> AutoConverge:
    args = {"threshold_pct": 50, "initial_pct": 20, "increment_pct": 10, "maximum_pct": 99}
    return AutoConverge(**{**args, **kw})


def test_auto_converge_throttles_on_every_second_high_period():
    ac = _ac()
    assert ac.check(100, 60) == 0  # dirtied 60 % of what was sent: high, once
    assert ac.check(100, 60) == 20  # twice: the first step
    assert ac.check(100, 60) == 20  # the count starts again
    assert ac.check(100, 60) == 30


def test_a_low_period_does_not_reset_the_count():
    ac = _ac()
    assert ac.check(100, 50) == 0  # 50 % is not over 50 %
    assert ac.check(100, 60) == 0
    assert ac.check(100, 10) == 0  # low: the count stays at one
    assert ac.check(100, 60) == 20


def test_the_default_steps_end_at_99():
    ac = _ac()
    pcts = [ac.check(100, 100) for _ in range(20)][1::2]
    assert pcts == [20, 30, 40, 50, 60, 70, 80, 90, 99, 99]


def test_tailslow_steps_only_to_the_ideal_cpu_share():
    ac = _ac(tailslow=True)
    ac.check(100, 100), ac.check(100, 100)  # 20 %
    # cpu_now 80; dirty 60 against a threshold of 50: ideal 80 * 50/60 = 66 (uint64_t),
    # so the step is min(80 - 66, 10) = 10; at 55 dirty: 80 * 50/55 = 72, a step of 8.
    ac.check(100, 60)
    assert ac.check(100, 60) == 30
    ac.check(100, 55)
    assert ac.check(100, 55) == 30 + (70 - int(70 * 50 / 55))


def test_counters_close_a_window_after_100_ms():
    c = MigrationCounters(downtime_limit_ns=300 * MS, max_bandwidth_bps=100e6)
    c.start(0.0, 0, 0)
    assert c.threshold_size == 0 and c.expected_downtime_ms == 300
    assert c.rate_limit_max == 10e6  # max-bandwidth / 10 per window
    c.account(10_000_000)
    assert not c.rate_limited()  # spent, not exceeded: one more page goes
    c.account(4096)
    assert c.rate_limited()
    assert not c.update(99 * MS, 10_004_096, 2443, dirty_pages_rate=0, remaining_at_sync=0)
    assert c.update(100 * MS, 10_004_096, 2443, dirty_pages_rate=0, remaining_at_sync=0)
    assert c.bandwidth_bps == pytest.approx(100.04096e6)
    assert c.threshold_size == pytest.approx(100.04096e6 * 0.3)
    assert not c.rate_limited() and c.iteration_start_ns == 100 * MS
    assert c.expected_downtime_ms == 300  # no dirty rate yet: unchanged
    c.update(200 * MS, 20_004_096, 4886, dirty_pages_rate=10.0, remaining_at_sync=50_000_000)
    assert c.expected_downtime_ms == pytest.approx(500)  # remaining at the sync / bandwidth


def test_avail_switchover_bandwidth_replaces_the_measured_one():
    c = MigrationCounters(downtime_limit_ns=300 * MS, max_bandwidth_bps=100e6,
                          switchover_bandwidth_bps=1e9)
    c.start(0.0, 0, 0)
    c.update(100 * MS, 1_000_000, 0, dirty_pages_rate=0, remaining_at_sync=0)
    assert c.threshold_size == pytest.approx(300e6)


def test_the_bitmap_counts_only_new_pages_and_scans_in_order_with_wrap():
    bm = MigrationBitmap(10)
    assert bm.dirty_pages == 10
    assert list(bm.peek(4)) == [0, 1, 2, 3]
    bm.clear(bm.peek(4))
    assert bm.sync([1, 5]) == 1  # 5 was still to send: not new
    assert bm.dirty_pages == 7
    bm.clear(bm.peek(100))  # 4..9: the scan does not wrap inside a batch
    assert bm.complete_rounds == 0 and list(bm.peek(100)) == [1] and bm.complete_rounds == 1
    bm.clear([1])
    assert len(bm.peek(5)) == 0 and bm.dirty_pages == 0
