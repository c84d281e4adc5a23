"""When precopy stops iterating: one function from the pass's figures to a decision.

QEMU's migration_iteration_run / migration_should_switchover: switch over
when the dirty bytes still to send fit in `bandwidth x downtime-limit`;
past max-iterations or max-time, apply `on-no-convergence`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

NS_PER_S = 1_000_000_000


class Decision(enum.Enum):
    CONTINUE = "continue"
    SWITCHOVER = "switchover"  # converged: remaining fits in the downtime limit
    FORCE = "force"  # did not converge; switch over anyway
    CANCEL = "cancel"  # did not converge; give up, the guest stays at the source


@dataclass(frozen=True)
class PassFigures:
    iteration: int  # passes done, the first (full) pass included
    remaining_bytes: int
    bandwidth_bps: float
    elapsed_ns: float  # since the migration started


def threshold_bytes(bandwidth_bps: float, downtime_limit_ns: int) -> float:
    return bandwidth_bps * downtime_limit_ns / NS_PER_S


def decide(figures: PassFigures, *, downtime_limit_ns: int, max_iterations: int,
           max_time_ns: int, on_no_convergence: str) -> Decision:
    if figures.remaining_bytes <= threshold_bytes(figures.bandwidth_bps, downtime_limit_ns):
        return Decision.SWITCHOVER
    if figures.iteration >= max_iterations or figures.elapsed_ns >= max_time_ns:
        return Decision.FORCE if on_no_convergence == "force" else Decision.CANCEL
    return Decision.CONTINUE
