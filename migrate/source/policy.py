"""When precopy stops iterating: one function from the pass's figures to a decision.

QEMU's migration_iteration_run / migration_should_switchover: switch over
when the dirty bytes still to send fit in `bandwidth x downtime-limit`;
past max-iterations or max-time, apply `on-no-convergence`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from vmmodel import NS_PER_S


class Decision(enum.Enum):
    CONTINUE = "continue"
    SWITCHOVER = "switchover"  # converged: remaining fits in the downtime limit
    FORCE = "force"  # did not converge; switch over anyway
    CANCEL = "cancel"  # did not converge; give up, the guest stays at the source


@dataclass(frozen=True)
class PassFigures:
    pass_no: int  # passes done, the first (full) pass included
    remaining_bytes: int
    bandwidth_bps: float
    elapsed_ns: float  # since the migration started


def threshold_bytes(bandwidth_bps: float, downtime_limit_ns: int) -> float:
    return bandwidth_bps * downtime_limit_ns / NS_PER_S


def decide(figures: PassFigures, *, downtime_limit_ns: int, max_iterations: int,
           max_time_ns: int, on_no_convergence: str) -> Decision:
    if figures.remaining_bytes <= threshold_bytes(figures.bandwidth_bps, downtime_limit_ns):
        return Decision.SWITCHOVER
    if figures.pass_no >= max_iterations or figures.elapsed_ns >= max_time_ns:
        return Decision.FORCE if on_no_convergence == "force" else Decision.CANCEL
    return Decision.CONTINUE


PERIOD_NS = 1_000_000_000  # QEMU checks at most once a second (migration_bitmap_sync)


class AutoConverge:
    """QEMU's auto-converge (migration_trigger_throttle, mig_throttle_guest_down).

    At each sync at least a second after the last check: if the bytes
    dirtied in the period exceed `threshold` % of the bytes sent, count it;
    the second time in a row, throttle the vCPUs (`initial` %, then
    `increment` % more each time, at most `maximum` %).
    """

    def __init__(self, *, threshold_pct: int, initial_pct: int, increment_pct: int,
                 maximum_pct: int) -> None:
        self.threshold_pct = threshold_pct
        self.initial_pct = initial_pct
        self.increment_pct = increment_pct
        self.maximum_pct = maximum_pct
        self.throttle_pct = 0
        self._high_count = 0
        self._period_start_ns = 0.0
        self._sent = 0
        self._dirtied = 0

    def after_sync(self, now_ns: float, bytes_sent: int, bytes_dirtied: int) -> int:
        """Account a pass's traffic and its sync; return the throttle percentage to apply."""
        self._sent += bytes_sent
        self._dirtied += bytes_dirtied
        if now_ns - self._period_start_ns < PERIOD_NS:
            return self.throttle_pct
        if self._dirtied > self._sent * self.threshold_pct / 100:
            self._high_count += 1
            if self._high_count >= 2:
                self._high_count = 0
                step = self.increment_pct if self.throttle_pct else self.initial_pct
                self.throttle_pct = min(self.throttle_pct + step, self.maximum_pct)
        self._period_start_ns, self._sent, self._dirtied = now_ns, 0, 0
        return self.throttle_pct
