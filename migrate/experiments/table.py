"""The sweep's numbers as text: a terminal table grouped by the axes, and summary.csv."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from migrate.experiments.metrics import COLUMNS, row
from migrate.experiments.results import PointResult
from migrate.experiments.sweep import COMPARISON, key_label
from migrate.units import MIB


def csv_columns(axes: list[str]) -> list[str]:
    return ["name", *axes, *COLUMNS]


def write_csv(path: Path, results: list[PointResult], axes: list[str]) -> None:
    """One row per point (see metrics.COLUMNS), written whole or not at all."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=csv_columns(axes))
        writer.writeheader()
        for result in results:
            writer.writerow(row(result, axes))
    tmp.replace(path)


def _verdict(r: dict[str, Any]) -> str:
    if r["status"] == "completed" and r["verified"]:
        return "ok"
    if r["status"] == "completed":
        return "UNVERIFIED"
    return r["status"].upper()


def _fmt(value: Any, spec: str, scale: float = 1.0) -> str:
    if value == "" or value is None:
        return "-"
    return format(float(value) * scale, spec)


TABLE = (  # header, how to show a row's value
    ("result", _verdict),
    ("conv", lambda r: {True: "yes", False: "NO", "": "-"}[r["converged"]]),
    ("passes", lambda r: str(r["precopy-passes"]) if r["precopy-passes"] != "" else "-"),
    ("total s", lambda r: _fmt(r["total-time-ms"], ",.2f", 1e-3)),
    ("downtime ms", lambda r: _fmt(r["downtime-ms"], ",.1f")),
    ("exp. ms", lambda r: _fmt(r["expected-downtime-ms"], ",.1f")),
    ("sent MiB", lambda r: _fmt(r["transferred-bytes"], ",.1f", 1 / MIB)),
    ("harvest ms", lambda r: _fmt(r["harvest-modeled-ms"], ",.3f")),
    ("branches", lambda r: r["harvest-branches"] or "-"),
    ("faults", lambda r: _fmt(r["write-faults"], ",.0f")),
    ("stall ms", lambda r: _fmt(r["vcpu-stall-ms"], ",.3f")),
    ("lock ms", lambda r: _fmt(r["mmu-lock-hold-ms"], ",.3f")),
)


def format_table(results: list[PointResult], axes: list[str]) -> str:
    """One line per point, axis columns first; a blank line where the first axis changes."""
    headers = [COMPARISON if a == COMPARISON else key_label(a) for a in axes]
    headers += [h for h, _ in TABLE]
    lines: list[list[str]] = []
    breaks: list[int] = []
    previous = None
    for result in results:
        r = row(result, axes)
        first = r[axes[0]] if axes else None
        if lines and len(axes) > 1 and first != previous:
            breaks.append(len(lines))
        previous = first
        lines.append([str(r[a]) for a in axes] + [show(r) for _, show in TABLE])
    widths = [max(len(x) for x in col) for col in zip(headers, *lines, strict=True)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < len(axes) else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    out = [fmt(headers), fmt(["-" * w for w in widths])]
    for i, cells in enumerate(lines):
        if i in breaks:
            out.append("")
        out.append(fmt(cells))
    return "\n".join(out)
