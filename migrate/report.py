"""What a migration reports: QEMU's `query-migrate` fields, one record per pass, the verdict.

Times are milliseconds unless the key names another unit, as QEMU's are;
`bandwidth` is bytes per second.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from migrate.record import SKIP, Record, keyed
from vmmodel import GuestStats, HarvestResult

STATUSES = ("completed", "failed", "cancelled")


@dataclass
class GuestCost(Record):
    """What the guest paid for dirty tracking over one stretch of the migration."""

    faults: int = 0  # guest write faults (and spte-instantiating page faults)
    vcpu_stall_ns: float = 0.0  # guest time lost waiting for mmu_lock
    fault_ns: float = 0.0  # guest time lost in write faults


@dataclass
class SetupRecord(GuestCost):
    """The setup: dirty logging enabled (every spte write-protected) before the first pass.

    Its faults belong to no round: setup plus the rounds make the guest's totals.
    """

    harvest: HarvestResult = field(default_factory=HarvestResult)  # enabling dirty logging
    sync: HarvestResult = field(default_factory=HarvestResult)  # the setup sync (sync 1)


@dataclass
class RoundRecord(GuestCost):
    """One interval between two bitmap syncs (QEMU's MIGRATION_PASS), or the stop-and-copy,
    and the sync that ended it."""

    pass_no: int = keyed("round", default=0)  # the dirty-sync-count it began at; the wire's pass
    phase: str = ""  # "precopy" | "stop-and-copy"
    start_ms: float = keyed("start", default=0.0)
    duration_ms: float = keyed("duration", default=0.0)
    dirty_pages: int = 0  # pages still to send when it began (migration_dirty_pages)
    pages_sent: int = 0
    bytes: int = 0
    bandwidth: float = 0.0  # bytes/s over the interval (its sync included)
    threshold_size: float = 0.0  # QEMU's threshold_size when the sync that ended it came
    # the dirty bytes at the sync / bandwidth; the stop-and-copy's: the measured downtime
    expected_downtime_ms: float = keyed("expected-downtime", default=0.0)
    cpu_throttle_percentage: int = 0  # auto-converge's throttle during the pass
    # the sync that ended it; none for the interval the completion ends (its sync is the
    # stop-and-copy's)
    harvest: HarvestResult = field(default_factory=HarvestResult)


@dataclass
class GuestTotals(GuestStats, Record):
    """The report's `guest`: the guest's totals over the whole migration, and its state."""

    zap_flushes: int = field(default=0, metadata={SKIP: True})  # counted in no report yet
    n_used_mmu_pages: int = 0  # shadow pages in use at the end
    running: bool = False  # whether the guest runs at the source (a failed or cancelled run)


@dataclass
class RamStats(Record):
    transferred: int = 0
    remaining: int = 0
    total: int = 0
    duplicate: int = 0
    normal: int = 0
    normal_bytes: int = 0
    compressed_bytes: int = 0  # payload bytes after lz4, for the batches it shrank
    compression_ratio: float = 1.0  # normal pages' bytes / their bytes on the wire (lz4)
    dirty_pages_rate: float = 0.0  # pages newly dirtied per second over the last period
    dirty_sync_count: int = 0
    mbps: float = 0.0  # the last window's bandwidth, in Mbit/s; at the end, the whole run's
    pages_per_second: float = 0.0
    precopy_bytes: int = 0
    downtime_bytes: int = 0


@dataclass
class Sample(Record):
    """`query-migrate` as a poll every 100 ms would see it (the reference runs' `progress`)."""

    t: float = 0.0  # seconds since the migration started
    status: str = "setup"  # setup | active | device | completed | failed | cancelled
    transferred: int = 0
    remaining: int = 0
    dirty_sync_count: int = 0
    mbps: float = 0.0
    dirty_pages_rate: float = 0.0
    expected_downtime: float = 0.0  # ms
    cpu_throttle_percentage: int = 0


@dataclass
class Report(Record):
    status: str = "failed"
    total_time_ms: float = keyed("total-time", default=0.0)
    setup_time_ms: float = keyed("setup-time", default=0.0)
    downtime_ms: float = keyed("downtime", default=0.0)
    expected_downtime_ms: float = keyed("expected-downtime", default=0.0)
    # The policy's last word: "switchover" (converged), "force", "cancel", or "continue"
    # when the migration ended some other way mid-iteration.
    switchover: str = ""
    cpu_throttle_percentage: int = 0  # auto-converge's throttle at the end (QEMU's name)
    max_cpu_throttle_percentage: int = 0  # the most it reached
    qemu_version: str = ""  # whose precopy loop ran (migration.qemu-version)
    complete_rounds: int = 0  # times the send scan went over all of memory
    ram: RamStats = field(default_factory=RamStats)
    verified: bool = False
    lost_pages: list[int] = field(default_factory=list)  # the first 10,000 at most
    lost_count: int = 0
    error: str | None = None
    seed: int = 0
    clock: str = "virtual"
    wall_time_s: float = 0.0
    verify_wall_ms: float = 0.0  # the emulator's own check, left out of wall-clock downtime
    guest: GuestTotals = field(default_factory=GuestTotals)
    setup: SetupRecord = field(default_factory=SetupRecord)
    config: dict[str, Any] = field(default_factory=dict)
    rounds: list[RoundRecord] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "completed" and self.verified

    @property
    def forced(self) -> bool:
        """Precopy did not converge and on-no-convergence = force switched over anyway."""
        return self.switchover == "force"

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def write_json(self, path: str | Path) -> None:
        """Write atomically, so an interrupted run never leaves half a report."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json() + "\n")
        tmp.replace(path)


def config_value(report: Report, dotted: str, default: Any = None) -> Any:
    """The scenario's value at `dotted` (`mmu.strategy`), as the report's config spells it."""
    node: Any = report.config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node
