"""`precopy report DIR`: a sweep's table on the terminal, summary.csv and the plots in DIR."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TextIO

from migrate.experiments import ExperimentError, analysis
from migrate.experiments.results import PointResult, ResultsFolder
from migrate.experiments.table import format_table, write_csv

SUMMARY = "summary.csv"
PLOT_HINT = "pip install -e '.[plot]'"


def load(folder: ResultsFolder) -> tuple[dict[str, list[Any]], list[PointResult], int, dict]:
    """The axes (with their values in sweep order), the results in sweep order, how many
    points the sweep has, and its report hints.

    Raise `ExperimentError` if *folder* holds no results.
    """
    if not folder.path.is_dir():
        raise ExperimentError(f"{folder.path}: no such folder")
    if not folder.results_path.is_file():
        raise ExperimentError(f"{folder.path}: no results.jsonl in it (run `precopy sweep "
                              f"SWEEP.toml --out {folder.path}` first)")
    by_name = folder.read_results()
    stored = folder.read_sweep()
    if stored is not None:
        sweep, points = stored
        axes = sweep.axis_values()
        names = [p.name for p in points]
        hints = sweep.report
    else:  # a results.jsonl alone: the axes are whatever the points vary
        axes = {}
        for r in by_name.values():
            for key, value in r.params.items():
                if value not in axes.setdefault(key, []):
                    axes[key].append(value)
        names, hints = list(by_name), {}
    ordered = [by_name[n] for n in names if n in by_name]
    ordered += [r for n, r in by_name.items() if n not in set(names)]
    if not ordered:
        raise ExperimentError(f"{folder.results_path}: no results yet")
    return axes, ordered, len(names), hints


def run_report(path: str | Path, *, plots: bool = True, x_axis: str | None = None,
               stream: TextIO | None = None) -> int:
    """Print the table and findings, write summary.csv and the plots; return 0.

    Raise `ExperimentError` for a folder without results or an --x that is
    not a numeric axis of the sweep.
    """
    stream = stream or sys.stdout
    folder = ResultsFolder(path)
    axes, results, planned, hints = load(folder)
    axis_names = list(axes)
    wanted = x_axis or hints.get("x")
    x = analysis.choose_x_axis(axes, wanted)
    if x_axis is not None and x is None:
        numeric = [a for a, v in axes.items() if analysis.axis_numbers(a, v) is not None]
        raise ExperimentError(f"--x {x_axis}: not a numeric axis of this sweep "
                              f"(numeric axes: {', '.join(numeric) or 'none'})")
    done = [r for r in results if r.report is not None]
    say = lambda text="": print(text, file=stream)  # noqa: E731
    have = f"{len(done)} of {planned} points have results" if planned else f"{len(done)} points"
    say(f"{folder.path}: {have}; axes: {', '.join(axis_names) or 'none'}")
    codes = sorted({r.code for r in done if r.code})
    if len(codes) > 1:
        say(f"warning: these results come from {len(codes)} versions of the code "
            f"({', '.join(codes)}); they may not compare: rerun into a fresh folder")
    say()
    say(format_table(results, axis_names))
    findings = _findings(done, axis_names, x)
    if findings:
        say()
        say("Findings:")
        for line in findings:
            say(f"  {line}")
    written = [folder.path / SUMMARY]
    write_csv(written[0], results, axis_names)
    if plots:
        from migrate.experiments.plots import write_plots  # matplotlib only when drawing

        try:
            written += write_plots(folder.path, results, axes, x)
        except ImportError:
            say()
            say(f"no plots: matplotlib is not installed (get it with: {PLOT_HINT})")
    say()
    say("wrote " + ", ".join(str(p) for p in written))
    return 0


def _findings(done: list[PointResult], axes: list[str], x: str | None) -> list[str]:
    lines = [c.describe() for c in analysis.crossovers(done)]
    if x is not None:
        lines += analysis.convergence_limits(done, x, axes)
    lines += analysis.strategy_effect(done, axes)
    return lines
