"""What a sweep's results say: the harvest crossover, where precopy stops converging,
and how much the harvest strategy moves downtime.

Pure functions of the results (no plotting); the report prints their
`describe()` lines and the plots draw the same numbers.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from migrate import units
from migrate.experiments.metrics import Harvest, converged, harvests
from migrate.experiments.results import PointResult
from migrate.experiments.sweep import COMPARISON, LINK, key_label, value_label
from migrate.report import config_value

STRATEGY_AXIS = "mmu.strategy"
PREFERRED_X = ("guest.workload.rate", "link.bandwidth", "migration.max-bandwidth")
WALK_SPREAD_MAX = 1.25  # walk costs further apart than this: not one guest size; no single fit


# --- axes: numbers and labels ------------------------------------------------------------


@dataclass(frozen=True)
class AxisScale:
    """How an axis's values sit on a plot's x axis."""

    title: str  # "guest write rate (writes/s)"
    convert: Callable[[Any], float]


def _key(axis: str) -> str:
    return axis.split(LINK)[0]


def axis_scale(axis: str) -> AxisScale:
    key = _key(axis)
    last = key.rsplit(".", 1)[-1]
    if key == "guest.workload.rate":
        return AxisScale("guest write rate (writes/s)", float)
    if "bandwidth" in last:
        return AxisScale(f"{key} (Gbit/s)", lambda v: units.parse_rate(v) * 8 / 1e9)
    if last in ("memory", "working-set", "vga-memory", "mapped-memory"):
        return AxisScale(f"{key} (MiB)", lambda v: units.parse_size(v) / units.MIB)
    if last in ("downtime-limit", "latency", "max-time", "slice", "duration"):
        return AxisScale(f"{key} (ms)", lambda v: units.parse_time_ns(v) / 1e6)
    return AxisScale(key, float)


def axis_numbers(axis: str, values: list[Any]) -> list[float] | None:
    """The axis's values as numbers on its scale, or None if they are not all numbers."""
    scale = axis_scale(axis)
    out = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            return None
        try:
            out.append(scale.convert(value))
        except (ValueError, TypeError):
            return None
    return out


def choose_x_axis(axes: dict[str, list[Any]], wanted: str | None = None) -> str | None:
    """The axis to put on the x of the downtime plot: *wanted*, a preferred one, or the
    first numeric axis with at least two values."""
    if wanted is not None:
        return wanted if wanted in axes and axis_numbers(wanted, axes[wanted]) else None
    numeric = [a for a, v in axes.items() if len(v) >= 2 and axis_numbers(a, v) is not None]
    for key in PREFERRED_X:
        for axis in numeric:
            if key in axis.split(LINK):
                return axis
    return numeric[0] if numeric else None


def series_label(params: dict[str, Any], axes: list[str]) -> str:
    """A series' legend label: its values on *axes*, named as in point names."""
    parts = []
    for axis in axes:
        value = params.get(axis)
        parts.append(str(value) if axis == COMPARISON else value_label(axis, value))
    return "-".join(parts) or "all points"


def group_by(results: list[PointResult], axes: list[str]) -> dict[str, list[PointResult]]:
    """Results grouped by their values on *axes*, groups and members in sweep order."""
    groups: dict[str, list[PointResult]] = {}
    for r in results:
        groups.setdefault(series_label(r.params, axes), []).append(r)
    return groups


# --- the crossover ------------------------------------------------------------------------


@dataclass(frozen=True)
class Crossover:
    """Harvest cost against the dirty ratio for one MMU shape, fitted.

    walk costs `walk_ns` whatever the dirty count; rmap costs
    `rmap_fixed_ns + rmap_per_page_ns x nr_dirty_pages`. rmap is cheaper
    below `ratio` = (walk - fixed) / per_page / n_used_mmu_pages.
    """

    shape: str
    n_used_mmu_pages: float
    walk_ns: float
    walk_spread: float  # max / min of the walk harvests' costs
    rmap_fixed_ns: float
    rmap_per_page_ns: float
    heuristic_harvests: int = 0
    heuristic_dearer: int = 0  # the heuristic took the branch that costs more
    dearer_extra_ns: float = 0.0
    dearer_ratios: tuple[float, float] = (0.0, 0.0)

    @property
    def ratio(self) -> float | None:
        if self.rmap_per_page_ns <= 0 or self.walk_spread > WALK_SPREAD_MAX:
            return None
        n = (self.walk_ns - self.rmap_fixed_ns) / self.rmap_per_page_ns
        return n / self.n_used_mmu_pages if self.n_used_mmu_pages else None

    def rmap_ns(self, nr_dirty_pages: float) -> float:
        return self.rmap_fixed_ns + self.rmap_per_page_ns * nr_dirty_pages

    def describe(self) -> str:
        text = (f"{self.shape}: walk {self.walk_ns / 1e3:,.1f} us a harvest "
                f"(n_used_mmu_pages {self.n_used_mmu_pages:,.0f}); rmap "
                f"{self.rmap_fixed_ns / 1e3:,.1f} us + {self.rmap_per_page_ns:,.1f} ns a dirty "
                "page")
        if self.ratio is None:
            text += (f"; walk costs vary {self.walk_spread:.2f}x across points (several guest "
                     "sizes or working sets?), so no single crossover")
        else:
            text += (f": rmap is cheaper below nr_dirty/n_used = {self.ratio:,.1f}; "
                     "the seed's heuristic switches at 1")
        if self.heuristic_harvests and self.ratio is not None:
            text += (f". The heuristic took the dearer branch in {self.heuristic_dearer} of "
                     f"{self.heuristic_harvests} harvests")
            if self.heuristic_dearer:
                lo, hi = self.dearer_ratios
                ratios = f"{lo:.3g}" if f"{lo:.3g}" == f"{hi:.3g}" else f"{lo:.3g} to {hi:.3g}"
                text += (f" (dirty ratio {ratios}), "
                         f"{self.dearer_extra_ns / 1e3:,.1f} us of modeled kernel time in all")
        return text


def crossovers(results: list[PointResult]) -> list[Crossover]:
    """Fit walk and rmap costs per MMU shape over every RAM-slot harvest with dirty pages."""
    by_shape: dict[str, list[Harvest]] = {}
    for r in results:
        for h in harvests(r):
            if h.nr_dirty_pages > 0 and h.of_ram and h.n_used_mmu_pages > 0:
                by_shape.setdefault(h.shape, []).append(h)
    out = []
    for shape, hs in by_shape.items():
        walks = [h.modeled_ns for h in hs if h.branch == "walk"]
        rmaps = [h for h in hs if h.branch == "rmap"]
        if not walks or len({h.nr_dirty_pages for h in rmaps}) < 2:
            continue
        slope, fixed = np.polyfit([h.nr_dirty_pages for h in rmaps],
                                  [h.modeled_ns for h in rmaps], 1)
        fit = Crossover(
            shape=shape,
            n_used_mmu_pages=statistics.median(h.n_used_mmu_pages for h in hs),
            walk_ns=statistics.median(walks),
            walk_spread=max(walks) / min(walks) if min(walks) > 0 else float("inf"),
            rmap_fixed_ns=float(fixed),
            rmap_per_page_ns=float(slope),
        )
        out.append(_judge_heuristic(fit, [h for h in hs if h.strategy == "heuristic"]))
    return out


def _judge_heuristic(fit: Crossover, hs: list[Harvest]) -> Crossover:
    """Count the heuristic's harvests that took the branch the fit says costs more."""
    if fit.ratio is None or not hs:
        return fit
    dearer = []
    extra = 0.0
    for h in hs:
        rmap, walk = fit.rmap_ns(h.nr_dirty_pages), fit.walk_ns
        cheaper = "rmap" if rmap < walk else "walk"
        if h.branch != cheaper:
            dearer.append(h.dirty_ratio)
            extra += abs(rmap - walk)
    ratios = (min(dearer), max(dearer)) if dearer else (0.0, 0.0)
    return Crossover(**{**fit.__dict__, "heuristic_harvests": len(hs),
                        "heuristic_dearer": len(dearer), "dearer_extra_ns": extra,
                        "dearer_ratios": ratios})


# --- convergence and the strategy's effect -------------------------------------------------


def convergence_limits(results: list[PointResult], x_axis: str, axes: list[str]) -> list[str]:
    """Per series, the runs of x values (in increasing order) where precopy converged and
    where it was forced to stop-and-copy."""
    rest = [a for a in axes if a != x_axis]
    scale = axis_scale(x_axis)
    lines = []
    for label, members in group_by(results, rest).items():
        points = sorted(((scale.convert(r.params[x_axis]), r.params[x_axis], converged(r.report))
                         for r in members if r.report is not None and x_axis in r.params),
                        key=lambda p: p[0])
        if not points:
            continue
        runs: list[tuple[bool | None, list[Any]]] = []
        for _, value, verdict in points:
            if runs and runs[-1][0] == verdict:
                runs[-1][1].append(value)
            else:
                runs.append((verdict, [value]))
        words = {True: "converged", False: "did not converge", None: "no pass finished"}
        name = key_label(x_axis)
        parts = [f"{words[verdict]} at {name} {_span(values)}" for verdict, values in runs]
        lines.append(f"{label}: " + "; ".join(parts))
    return lines


def _span(values: list[Any]) -> str:
    return str(values[0]) if len(values) == 1 else f"{values[0]} to {values[-1]}"


def strategy_effect(results: list[PointResult], axes: list[str]) -> list[str]:
    """How far the harvest strategy moves downtime and total time, other axes held fixed."""
    if STRATEGY_AXIS not in axes:
        return []
    rest = [a for a in axes if a != STRATEGY_AXIS]
    spreads = []
    flips = []
    for label, members in group_by(results, rest).items():
        done = [r for r in members if r.report is not None and r.status == "completed"]
        if len(done) < 2:
            continue
        down = {r.params[STRATEGY_AXIS]: r.report.downtime_ms for r in done}
        total = {r.params[STRATEGY_AXIS]: r.report.total_time_ms for r in done}
        spreads.append((label, max(down.values()) - min(down.values()), min(down.values()),
                        max(total.values()) - min(total.values()), min(total.values())))
        verdicts = {converged(r.report) for r in done}
        if len(verdicts) > 1:
            flips.append(label)
    if not spreads:
        return []
    worst = max(spreads, key=lambda s: s[1])
    worst_total = max(spreads, key=lambda s: s[3])
    lines = [
        f"the harvest strategy moves downtime by at most {worst[1]:,.3f} ms "
        f"({_share(worst[1], worst[2])}, at {worst[0]}) across {len(spreads)} "
        f"group{'s' * (len(spreads) != 1)} of points",
        f"and total time by at most {worst_total[3]:,.1f} ms "
        f"({_share(worst_total[3], worst_total[4])}, at {worst_total[0]})",
    ]
    if flips:
        lines.append("whether precopy converges depends on the strategy at: " + ", ".join(flips))
    return lines


def _share(part: float, whole: float) -> str:
    return f"{100 * part / whole:.3g} %" if whole else "n/a"


def describe_config(results: list[PointResult]) -> str:
    """What the points have in common, in a few words (for plot subtitles)."""
    reports = [r.report for r in results if r.report is not None]
    if not reports:
        return ""
    words = []
    for key, spell in (("guest.memory", "{} guest"), ("guest.workload.kind", "{} workload"),
                       ("mmu.shape", "{} MMU"), ("migration.max-bandwidth", "max-bandwidth {}"),
                       ("link.bandwidth", "link {}"),
                       ("migration.downtime-limit", "downtime-limit {}"),
                       ("migration.max-iterations", "max-iterations {}")):
        values = {json.dumps(config_value(r, key)) for r in reports}
        if len(values) == 1:
            words.append(spell.format(config_value(reports[0], key)))
    return ", ".join(words)
