"""QEMU's decisions in the precopy loop, per version, and auto-converge.

`migration_iteration_run`: when the dirty bytes still to send are below
`threshold_size`, sync the bitmap (7.2's `ram_save_pending`, 8.0+'s
`pending_exact`); then complete if what is pending is below the threshold
(10.2: at most it), else send more. precopy's own policy comes on top, as
libvirt's does: past `max-iterations` syncs or `max-time`, apply
`on-no-convergence`.
"""

from __future__ import annotations

import enum

PERIOD_NS = 1_000_000_000  # migration_bitmap_sync: `end_time > time_last_bitmap_sync + 1000`
# QEMU 9.2+ (migration/cpu-throttle.c): with auto-converge, a sync every 5 s if none came.
DIRTY_SYNC_TIMESLICE_NS = 5_000_000_000  # CPU_THROTTLE_DIRTY_SYNC_TIMESLICE_MS 5000
PERIODIC_SYNC_SINCE = "9.2"


class Decision(enum.Enum):
    CONTINUE = "continue"
    SWITCHOVER = "switchover"  # converged: pending fits in the threshold
    FORCE = "force"  # did not converge; switch over anyway
    CANCEL = "cancel"  # did not converge; give up, the guest stays at the source


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def should_sync(pending_bytes: int, threshold_size: float) -> bool:
    """7.2 ram_save_pending: `remaining_size < max_size`; 8.0+: `pending_size < threshold_size`."""
    return pending_bytes < threshold_size


def can_complete(version: str, pending_bytes: int, threshold_size: float) -> bool:
    """Whether `migration_iteration_run` completes with `pending_bytes` still dirty.

    7.2 and 9.2: `!pending_size || pending_size < threshold_size`;
    10.2: `pending_size <= threshold_size`.
    """
    if version_tuple(version) >= (10, 2):
        return pending_bytes <= threshold_size
    return pending_bytes == 0 or pending_bytes < threshold_size


def has_periodic_sync(version: str) -> bool:
    return version_tuple(version) >= version_tuple(PERIODIC_SYNC_SINCE)


def give_up(*, syncs_after_setup: int, elapsed_ns: float, max_iterations: int,
            max_time_ns: int, on_no_convergence: str) -> Decision:
    """precopy's own bound on a migration that does not converge."""
    if syncs_after_setup >= max_iterations or elapsed_ns >= max_time_ns:
        return Decision.FORCE if on_no_convergence == "force" else Decision.CANCEL
    return Decision.CONTINUE


class AutoConverge:
    """QEMU's auto-converge (migration_trigger_throttle, mig_throttle_guest_down).

    Checked inside a sync, once a period of more than a second has passed:
    if the bytes newly dirtied in the period exceed `threshold` % of the bytes
    sent in it, count it; every second such period (not necessarily
    consecutive: the count is never reset by a good one) throttles the vCPUs:
    `initial` %, then `increment` % more (or less, with tailslow), at most
    `maximum` %.
    """

    def __init__(self, *, threshold_pct: int, initial_pct: int, increment_pct: int,
                 maximum_pct: int, tailslow: bool = False) -> None:
        self.threshold_pct = threshold_pct
        self.initial_pct = initial_pct
        self.increment_pct = increment_pct
        self.maximum_pct = maximum_pct
        self.tailslow = tailslow
        self.throttle_pct = 0
        self.dirty_rate_high_cnt = 0

    def check(self, bytes_xfer_period: int, bytes_dirty_period: int) -> int:
        """One period's figures; return the throttle percentage to apply from now."""
        bytes_dirty_threshold = bytes_xfer_period * self.threshold_pct / 100
        if bytes_dirty_period > bytes_dirty_threshold:
            self.dirty_rate_high_cnt += 1
            if self.dirty_rate_high_cnt >= 2:
                self.dirty_rate_high_cnt = 0
                self._throttle_down(bytes_dirty_period, bytes_dirty_threshold)
        return self.throttle_pct

    def _throttle_down(self, bytes_dirty_period: float, bytes_dirty_threshold: float) -> None:
        """mig_throttle_guest_down(); cpu_throttle_set() clamps to 1..99."""
        if not self.throttle_pct:
            self.throttle_pct = min(max(self.initial_pct, 1), 99)
            return
        if self.tailslow:
            cpu_now = 100 - self.throttle_pct
            cpu_ideal = int(cpu_now * (bytes_dirty_threshold / bytes_dirty_period))  # uint64_t
            step = min(cpu_now - cpu_ideal, self.increment_pct)
        else:
            step = self.increment_pct
        self.throttle_pct = min(max(min(self.throttle_pct + step, self.maximum_pct), 1), 99)
