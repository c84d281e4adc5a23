"""One point's figures, read from its report: a flat row (the CSV's columns) and its harvests.

Units are in the column names. Times from the report are milliseconds of
model time (virtual clock) unless a name says otherwise; `wall-time-s` is
the emulator's own time. `total-time-ms` and `downtime-ms` are left empty
for a migration that did not complete (the report has no figure for them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from migrate import units
from migrate.experiments.results import PointResult

PAGE_SIZE = 4096

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
    round: int
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


def config_value(report: dict[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = report.get("config", {})
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def downtime_limit_ms(report: dict[str, Any]) -> float | None:
    text = config_value(report, "migration.downtime-limit")
    try:
        return units.parse_time_ns(text) / 1e6 if text is not None else None
    except ValueError:
        return None


def precopy_passes(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in report.get("rounds", []) if r.get("phase") == "precopy"]


def converged(report: dict[str, Any]) -> bool | None:
    """Whether precopy converged, as the engine's policy decided (`switchover`).

    Reports from before that field existed are judged by the same rule
    (migrate/policy.py): the last pass left no more than the downtime limit's
    worth. None if no pass finished.
    """
    decision = report.get("switchover")
    if decision:
        return None if decision == "continue" else decision == "switchover"
    passes = precopy_passes(report)
    limit = downtime_limit_ms(report)
    if not passes or limit is None:
        return None
    return float(passes[-1].get("expected-downtime", float("inf"))) <= limit


def harvests(result: PointResult) -> list[Harvest]:
    report = result.report or {}
    strategy = config_value(report, "mmu.strategy", "?")
    shape = config_value(report, "mmu.shape", "?")
    out = []
    for r in report.get("rounds", []):
        record = r.get("harvest") or {}
        # A sync over several memslots carries each slot's own harvest: the heuristic
        # decides per slot, so each is one point of the crossover.
        for h in record.get("slots") or [record]:
            if "modeled-ns" not in h:
                continue
            out.append(Harvest(
                point=result.name, strategy=h.get("strategy", strategy),
                branch=h.get("branch", "?"), shape=shape, phase=r.get("phase", "?"),
                round=int(r.get("round", 0)), nr_dirty_pages=int(h.get("nr-dirty-pages", 0)),
                n_used_mmu_pages=int(h.get("n-used-mmu-pages", 0)),
                modeled_ns=float(h["modeled-ns"]), lock_hold_ns=float(h.get("lock-hold-ns", 0)),
                slot=str(h.get("slot", "")),
            ))
    return out


def _cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, list | dict) else value


def row(result: PointResult, axes: list[str]) -> dict[str, Any]:
    """The point's summary row: name, its axis values, then COLUMNS."""
    out: dict[str, Any] = {"name": result.name}
    out.update({axis: _cell(result.params.get(axis, "")) for axis in axes})
    report = result.report or {}
    ram = report.get("ram", {})
    guest = report.get("guest", {})
    rounds = report.get("rounds", [])
    stop = [r for r in rounds if r.get("phase") == "stop-and-copy"]
    branches: dict[str, int] = {}
    for r in rounds:
        branch = (r.get("harvest") or {}).get("branch")
        if branch:
            branches[branch] = branches.get(branch, 0) + 1
    ok = converged(report)
    limit = downtime_limit_ms(report)
    workload = config_value(report, "guest.workload.kind", "")
    if workload == "mix":
        parts = config_value(report, "guest.workload.parts", [])
        workload = "mix(" + "+".join(p.get("kind", "?") for p in parts) + ")"
    has = result.report is not None
    completed = result.status == "completed"
    out.update({
        "status": result.status,
        "verified": result.verified,
        "converged": "" if ok is None else ok,
        "precopy-passes": len(precopy_passes(report)) if has else "",
        "rounds": len(rounds) if has else "",
        "dirty-sync-count": ram.get("dirty-sync-count", ""),
        "total-time-ms": _round(report.get("total-time"), 3) if completed else "",
        "setup-time-ms": _round(report.get("setup-time"), 3),
        "downtime-ms": _round(report.get("downtime"), 3) if completed else "",
        "expected-downtime-ms": _round(report.get("expected-downtime"), 3),
        "downtime-limit-ms": "" if limit is None else limit,
        "transferred-bytes": ram.get("transferred", ""),
        "precopy-bytes": ram.get("precopy-bytes", ""),
        "downtime-bytes": ram.get("downtime-bytes", ""),
        "dirty-pages-rate-pps": _round(ram.get("dirty-pages-rate"), 1),
        "mbps": _round(ram.get("mbps"), 1),
        "harvest-modeled-ms": _round(_sum(rounds, "modeled-ns") / 1e6, 6) if has else "",
        "harvest-downtime-us": _round(_sum(stop, "modeled-ns") / 1e3, 3) if stop else "",
        "harvest-branches": " ".join(f"{b}:{n}" for b, n in branches.items()),
        "writes": guest.get("writes", ""),
        "write-faults": guest.get("write-faults", ""),
        "fault-ms": _ns_to_ms(guest.get("fault-ns")),
        "vcpu-stall-ms": _ns_to_ms(guest.get("vcpu-stall-ns")),
        "mmu-lock-hold-ms": _round(_sum(rounds, "lock-hold-ns") / 1e6, 6) if has else "",
        "lock-acquisitions": int(_sum(rounds, "lock-acquisitions")) if has else "",
        "tlb-flushes": int(_sum(rounds, "tlb-flushes")) if has else "",
        "lost-pages": len(report.get("lost-pages", [])) if has else "",
        "strategy": config_value(report, "mmu.strategy", ""),
        "shape": config_value(report, "mmu.shape", ""),
        "memory": config_value(report, "guest.memory", ""),
        "workload": workload,
        "wall-time-s": result.wall_time_s,
        "error": result.error or "",
        "command": result.command,
    })
    return out


def _sum(rounds: list[dict[str, Any]], key: str) -> float:
    return float(sum((r.get("harvest") or {}).get(key, 0) for r in rounds))


def _round(value: Any, digits: int) -> Any:
    return round(float(value), digits) if isinstance(value, int | float) else ""


def _ns_to_ms(value: Any) -> Any:
    return round(float(value) / 1e6, 6) if isinstance(value, int | float) else ""
