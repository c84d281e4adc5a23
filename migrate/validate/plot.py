"""`--plot DIR`: per run, precopy's `remaining` beside QEMU's over time, one PNG each.

matplotlib is imported here only, and only when a plot is drawn (it is an optional
dependency: `pip install -e '.[plot]'`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from migrate.units import MIB
from migrate.validate.compare import Comparison
from migrate.validate.records import RunRecord

DPI = 100


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def measured_remaining(record: RunRecord) -> tuple[np.ndarray, np.ndarray]:
    """QEMU's `remaining` (MiB) at each poll that has one, and the poll's time (s)."""
    p = record.progress
    have = ~np.isnan(p["remaining"])
    return p.t[have], p["remaining"][have] / MIB


def draw(record: RunRecord, comparison: Comparison) -> Any:
    """The figure: measured on the left, predicted on the right, on the same axes (each
    with the other faint behind it), QEMU's syncs (MIGRATION_PASS events) marked."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2), sharex=True, sharey=True)
    t, remaining = measured_remaining(record)
    ts = np.array([s[0] for s in comparison.samples])
    rs = np.array([s[1] for s in comparison.samples]) / MIB
    left.plot(ts, rs, color="0.75", lw=0.8, label="precopy")  # the other side, faint
    left.plot(t, remaining, color="tab:blue", lw=1.2, label="QEMU")
    for e in record.passes():
        left.axvline(e.t_qemu, color="0.8", lw=0.6, zorder=0)
    left.set_title(f"QEMU {record.qemu_version} (measured): {comparison.verdict[0]}, "
                   f"{comparison.syncs.measured:.0f} syncs", fontsize=10)
    right.plot(t, remaining, color="0.75", lw=0.8, label="QEMU")
    right.plot(ts, rs, color="tab:orange", lw=1.2, label="precopy")
    right.set_title(f"precopy (predicted): {comparison.verdict[1]}, "
                    f"{comparison.syncs.predicted:.0f} syncs", fontsize=10)
    for ax in (left, right):
        ax.set_xlabel("time since migrate (s)")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    left.set_ylabel("remaining (MiB)")
    fig.suptitle(f"{record.name}: dirty memory still to send", fontsize=11)
    fig.tight_layout()
    return fig


def write_plots(folder: Path, pairs: list[tuple[RunRecord, Comparison]]) -> list[Path]:
    """One `remaining-RUN.png` per run in *folder* (made if missing); the files written.

    Raise `ImportError` if matplotlib is not installed.
    """
    plt = _pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for record, comparison in pairs:
        fig = draw(record, comparison)
        path = folder / f"remaining-{record.name}.png"
        fig.savefig(path, dpi=DPI)
        plt.close(fig)
        written.append(path)
    return written
