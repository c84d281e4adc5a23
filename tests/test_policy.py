"""The completion policy and QEMU's auto-converge, as plain functions of the figures."""

from __future__ import annotations

from migrate.source.policy import AutoConverge, Decision, PassFigures, decide

S = 1_000_000_000
LIMITS = {"downtime_limit_ns": 300_000_000, "max_iterations": 5, "max_time_ns": 60 * S}


def test_switchover_when_the_rest_fits_the_downtime_limit():
    bw = 100e6  # bytes/s: 300 ms carries 30 MB
    assert decide(PassFigures(1, 30_000_000, bw, S), **LIMITS,
                  on_no_convergence="force") is Decision.SWITCHOVER
    assert decide(PassFigures(1, 30_000_001, bw, S), **LIMITS,
                  on_no_convergence="force") is Decision.CONTINUE


def test_no_convergence_policy_at_max_iterations_or_max_time():
    big = PassFigures(5, 10**9, 100e6, S)
    assert decide(big, **LIMITS, on_no_convergence="force") is Decision.FORCE
    assert decide(big, **LIMITS, on_no_convergence="cancel") is Decision.CANCEL
    late = PassFigures(2, 10**9, 100e6, 60 * S)
    assert decide(late, **LIMITS, on_no_convergence="cancel") is Decision.CANCEL


def _ac() -> AutoConverge:
    return AutoConverge(threshold_pct=50, initial_pct=20, increment_pct=10, maximum_pct=99)


def test_auto_converge_throttles_on_the_second_high_period_then_steps():
    ac = _ac()
    # Dirtying 60 % of what was sent, one period a second: high, high -> 20 %.
    assert ac.after_sync(1.0 * S, 100, 60) == 0
    assert ac.after_sync(2.0 * S, 100, 60) == 20
    assert ac.after_sync(3.0 * S, 100, 60) == 20  # the count starts again
    assert ac.after_sync(4.0 * S, 100, 60) == 30


def test_auto_converge_waits_a_second_and_ignores_low_periods():
    ac = _ac()
    assert ac.after_sync(0.5 * S, 100, 90) == 0  # under a second: accumulated, not judged
    assert ac.after_sync(1.0 * S, 100, 0) == 0  # 90 of 200 bytes: 45 %, under the threshold
    assert ac.after_sync(2.0 * S, 100, 60) == 0  # one high period is not enough
    assert ac.after_sync(3.0 * S, 100, 10) == 0  # ... and a low one in between does not reset it
    assert ac.after_sync(4.0 * S, 100, 60) == 20


def test_auto_converge_stops_at_its_maximum():
    ac = AutoConverge(threshold_pct=50, initial_pct=40, increment_pct=40, maximum_pct=99)
    pcts = [ac.after_sync(t * S, 100, 100) for t in range(1, 9)]
    assert pcts == [0, 40, 40, 80, 80, 99, 99, 99]
