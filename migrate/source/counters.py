"""QEMU's migration counters and rate limit: `migration_update_counters`, `migration_rate_limit`.

Time goes in 100 ms windows (`BUFFER_DELAY`). A window closes at the first
loop pass at least 100 ms after it opened: its bytes over its length are the
bandwidth, and `threshold_size` is that bandwidth times `downtime-limit` (or
`avail-switchover-bandwidth` times it, when set, QEMU 9.2+). The rate limit
is a budget of `max-bandwidth / 10` bytes per window, checked after each
page is queued, so a window may overshoot by one page; once it is spent, the
migration thread sleeps out the window. `threshold_size` is 0 until the
first window closes.
"""

from __future__ import annotations

from dataclasses import dataclass

NS_PER_MS = 1_000_000
BUFFER_DELAY_NS = 100 * NS_PER_MS  # QEMU: #define BUFFER_DELAY 100 (ms)
XFER_LIMIT_RATIO = 10  # QEMU: 1000 / BUFFER_DELAY, windows per second
# QEMU updates expected_downtime only once a window carried more than this (bytes).
EXPECTED_DOWNTIME_MIN_BYTES = 10000


@dataclass
class MigrationCounters:
    """The window's figures, as QEMU's MigrationState keeps them."""

    downtime_limit_ns: int
    max_bandwidth_bps: float  # 0: no limit (QEMU's RATE_LIMIT_DISABLED, at completion)
    switchover_bandwidth_bps: float = 0.0  # avail-switchover-bandwidth; 0: the measured one
    threshold_size: float = 0.0  # bytes
    bandwidth_bps: float = 0.0  # the last closed window's bytes per second
    mbps: float = 0.0  # the same in Mbit/s, as query-migrate says it
    pages_per_second: float = 0.0
    expected_downtime_ms: float = 0.0
    iteration_start_ns: float = 0.0  # the window's start
    iteration_initial_bytes: int = 0
    iteration_initial_pages: int = 0
    rate_limit_used: int = 0  # bytes queued in this window

    def __post_init__(self) -> None:
        self.expected_downtime_ms = self.downtime_limit_ns / NS_PER_MS  # migrate_fd_connect

    def start(self, now_ns: float, transferred: int, pages: int) -> None:
        """The migration thread starts: the first window opens."""
        self.iteration_start_ns = now_ns
        self.iteration_initial_bytes = transferred
        self.iteration_initial_pages = pages
        self.rate_limit_used = 0

    @property
    def rate_limit_max(self) -> float:
        """The window's budget in bytes (inf: no limit)."""
        if self.max_bandwidth_bps <= 0:
            return float("inf")
        return self.max_bandwidth_bps / XFER_LIMIT_RATIO

    def budget_left(self) -> float:
        """Bytes the window still allows before the next page makes it exceeded."""
        return self.rate_limit_max - self.rate_limit_used

    def rate_limited(self) -> bool:
        """QEMU's qemu_file_rate_limit(): the window's budget is spent (more than spent)."""
        return self.rate_limit_used > self.rate_limit_max

    def account(self, nbytes: int) -> None:
        self.rate_limit_used += nbytes

    def window_end_ns(self) -> float:
        return self.iteration_start_ns + BUFFER_DELAY_NS

    def update(self, now_ns: float, transferred: int, pages: int, *,
               dirty_pages_rate: float, remaining_at_sync: int) -> bool:
        """migration_update_counters(): close the window if 100 ms have passed; say if it did."""
        if now_ns < self.iteration_start_ns + BUFFER_DELAY_NS:
            return False
        sent = transferred - self.iteration_initial_bytes
        spent_ns = now_ns - self.iteration_start_ns
        self.bandwidth_bps = sent * 1e9 / spent_ns
        expected_bps = self.switchover_bandwidth_bps or self.bandwidth_bps
        self.threshold_size = expected_bps * self.downtime_limit_ns / 1e9
        self.mbps = sent * 8 / (spent_ns / 1e9) / 1e6
        self.pages_per_second = (pages - self.iteration_initial_pages) * 1e9 / spent_ns
        if dirty_pages_rate and sent > EXPECTED_DOWNTIME_MIN_BYTES and expected_bps:
            self.expected_downtime_ms = remaining_at_sync / expected_bps * 1e3
        self.rate_limit_used = 0  # qemu_file_reset_rate_limit / migration_rate_reset
        self.start(now_ns, transferred, pages)
        return True
