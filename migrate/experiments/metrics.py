"""One point's figures, read from its report: a flat row (the CSV's columns) and its harvests.

Units are in the column names. Times from the report are milliseconds of
model time (virtual clock) unless a name says otherwise; `wall-time-s` is
the emulator's own time. `total-time-ms` and `downtime-ms` are left empty
for a migration that did not complete (it has no downtime, and its
total-time, the time until it ended, does not compare with a completed one's).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from migrate import units
from migrate.experiments.results import PointResult
from migrate.report import Report, RoundRecord, config_value

# Every column after the axes', in order.
COLUMNS = (
    "status", "verified", "converged", "precopy-passes", "rounds", "dirty-sync-count",
    "total-time-ms", "setup-time-ms", "downtime-ms", "expected-downtime-ms", "downtime-limit-ms",
    "transferred-bytes", "precopy-bytes", "downtime-bytes", "dirty-pages-rate-pps", "mbps",
    "harvest-modeled-ms", "harvest-downtime-us", "harvest-branches",
    "writes", "write-faults", "fault-ms", "vcpu-stall-ms", "mmu-lock-hold-ms",
    "lock-acquisitions", "tlb-flushes", "lost-pages",
    "strategy", "shape", "memory", "workload", "wall-time-s", "error", "command",
)


@dataclass(frozen=True)
class Harvest:
    """One sync's harvest in one point: what the seed's heuristic looks at, and its cost."""

    point: str
    strategy: str  # configured: walk | rmap | heuristic | ...
    branch: str  # what ran: walk | rmap (several slots: "rmap+walk")
    shape: str
    phase: str  # precopy | stop-and-copy
    pass_no: int
    nr_dirty_pages: int
    n_used_mmu_pages: int
    modeled_ns: float
    lock_hold_ns: float
    slot: str = "ram"  # the memslot harvested (reports before per-slot records: "")

    @property
    def of_ram(self) -> bool:
        """A harvest of the RAM slot alone: what the crossover is fitted on (a framebuffer
        slot's walk costs less, as fewer shadow pages map it)."""
        return self.slot in ("ram", "") and "+" not in self.branch

    @property
    def dirty_ratio(self) -> float:
        """nr_dirty_pages / n_used_mmu_pages: the heuristic takes rmap below 1."""
        return self.nr_dirty_pages / self.n_used_mmu_pages if self.n_used_mmu_pages else 0.0


def downtime_limit_ms(report: Report) -> float | None:
    text = config_value(report, "migration.downtime-limit")
    try:
        return units.parse_time_ns(text) / 1e6 if text is not None else None
    except ValueError:
        return None


def precopy_passes(report: Report) -> list[RoundRecord]:
    return [r for r in report.rounds if r.phase == "precopy"]


def converged(report: Report) -> bool | None:
    """Whether precopy converged, as the engine's policy decided (`switchover`).

    Reports from before that field existed are judged by the same rule
    (migrate/policy.py): the last pass left no more than the downtime limit's
    worth. None if no pass finished.
    """
    decision = report.switchover
    if decision:
        return None if decision == "continue" else decision == "switchover"
    passes = precopy_passes(report)
    limit = downtime_limit_ms(report)
    if not passes or limit is None:
        return None
    return passes[-1].expected_downtime_ms <= limit


def harvests(result: PointResult) -> list[Harvest]:
    report = result.report or Report()
    strategy = config_value(report, "mmu.strategy", "?")
    shape = config_value(report, "mmu.shape", "?")
    out = []
    for r in report.rounds:
        # A sync over several memslots carries each slot's own harvest: the heuristic
        # decides per slot, so each is one point of the crossover.
        for h in r.harvest.slots or (r.harvest,):
            if not h.branch:
                continue  # no harvest record in this round (an old report)
            out.append(Harvest(
                point=result.name, strategy=h.strategy or strategy, branch=h.branch,
                shape=shape, phase=r.phase, pass_no=r.pass_no,
                nr_dirty_pages=h.nr_dirty_pages, n_used_mmu_pages=h.n_used_mmu_pages,
                modeled_ns=float(round(h.kernel_ns)), lock_hold_ns=float(round(h.lock_hold_ns)),
                slot=h.slot,
            ))
    return out


def _cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, list | dict) else value


def row(result: PointResult, axes: list[str]) -> dict[str, Any]:
    """The point's summary row: name, its axis values, then COLUMNS."""
    out: dict[str, Any] = {"name": result.name}
    out.update({axis: _cell(result.params.get(axis, "")) for axis in axes})
    has = result.report is not None
    report = result.report or Report()
    ram, guest, rounds = report.ram, report.guest, report.rounds
    stop = [r for r in rounds if r.phase == "stop-and-copy"]
    branches: dict[str, int] = {}
    for r in rounds:
        branch = r.harvest.branch
        if branch:
            branches[branch] = branches.get(branch, 0) + 1
    ok = converged(report)
    limit = downtime_limit_ms(report)
    workload = config_value(report, "guest.workload.kind", "")
    if workload == "mix":
        parts = config_value(report, "guest.workload.parts", [])
        workload = "mix(" + "+".join(p.get("kind", "?") for p in parts) + ")"
    completed = result.status == "completed"
    figure = lambda value: value if has else ""  # noqa: E731  (no report, no figure)
    out.update({
        "status": result.status,
        "verified": result.verified,
        "converged": "" if ok is None else ok,
        "precopy-passes": len(precopy_passes(report)) if has else "",
        "rounds": len(rounds) if has else "",
        "dirty-sync-count": figure(ram.dirty_sync_count),
        "total-time-ms": _round(report.total_time_ms, 3) if completed else "",
        "setup-time-ms": figure(_round(report.setup_time_ms, 3)),
        "downtime-ms": _round(report.downtime_ms, 3) if completed else "",
        "expected-downtime-ms": figure(_round(report.expected_downtime_ms, 3)),
        "downtime-limit-ms": "" if limit is None else limit,
        "transferred-bytes": figure(ram.transferred),
        "precopy-bytes": figure(ram.precopy_bytes),
        "downtime-bytes": figure(ram.downtime_bytes),
        "dirty-pages-rate-pps": figure(_round(ram.dirty_pages_rate, 1)),
        "mbps": figure(_round(ram.mbps, 1)),
        "harvest-modeled-ms": figure(round(_sum(rounds, "kernel_ns") / 1e6, 6)),
        "harvest-downtime-us": round(_sum(stop, "kernel_ns") / 1e3, 3) if stop else "",
        "harvest-branches": " ".join(f"{b}:{n}" for b, n in branches.items()),
        "writes": figure(guest.writes),
        "write-faults": figure(guest.write_faults),
        "fault-ms": figure(_ns_to_ms(guest.fault_ns)),
        "vcpu-stall-ms": figure(_ns_to_ms(guest.vcpu_stall_ns)),
        "mmu-lock-hold-ms": figure(round(_sum(rounds, "lock_hold_ns") / 1e6, 6)),
        "lock-acquisitions": figure(int(_sum(rounds, "lock_acquisitions"))),
        "tlb-flushes": figure(int(_sum(rounds, "tlb_flushes"))),
        "lost-pages": figure(len(report.lost_pages)),
        "strategy": config_value(report, "mmu.strategy", ""),
        "shape": config_value(report, "mmu.shape", ""),
        "memory": config_value(report, "guest.memory", ""),
        "workload": workload,
        "wall-time-s": result.wall_time_s,
        "error": result.error or "",
        "command": result.command,
    })
    return out


def _sum(rounds: list[RoundRecord], name: str) -> float:
    """The rounds' harvests' total of field `name`, in the whole units the report stores."""
    return float(sum(round(getattr(r.harvest, name)) for r in rounds))


def _round(value: float, digits: int) -> float:
    return round(float(value), digits)


def _ns_to_ms(ns: float) -> float:
    return round(round(ns) / 1e6, 6)
