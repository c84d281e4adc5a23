"""`precopy report` on a real sweep's output: the table, summary.csv, the plots."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
from pathlib import Path

import pytest

from migrate.experiments.metrics import COLUMNS
from migrate.report import Report
from tests.procs import ROOT, SMALL, precopy

HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
PLOTS = ("crossover.png", "downtime.png", "convergence.png", "guest-cost.png")
AXES = ["comparison", "mmu.strategy", "guest.workload.rate"]

# Two comparisons x a 2 x 2 grid: the "stuck" points cannot converge (16 MiB rewritten
# against 16 MiB/s) and are cancelled, which is a result like any other.
SWEEP = """
description = "report test"
base = "{base}"

[comparisons.ok]
seed = 7
[comparisons.stuck]
"guest.workload.kind" = "uniform"
"guest.workload.working-set" = "16MiB"
"migration.max-bandwidth" = "16MiB/s"
"migration.max-iterations" = 3
"migration.on-no-convergence" = "cancel"

[grid]
"mmu.strategy" = ["walk", "rmap"]
"guest.workload.rate" = [4000, 40000]
"""


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("report")
    sweep = tmp / "s.toml"
    sweep.write_text(SWEEP.format(base=SMALL))
    out = tmp / "out"
    proc = precopy("sweep", str(sweep), "--out", str(out), "--jobs", "2", timeout=120)
    assert proc.returncode == 1, proc.stderr  # the stuck points were cancelled
    assert "8 of 8 points have results: 4 ok, 4 not ok" in proc.stdout
    return out


def _rows(out: Path) -> list[dict]:
    with open(out / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_report_writes_the_table_csv_and_plots(swept):
    proc = precopy("report", str(swept))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "8 of 8 points have results" in lines[0]
    assert "comparison  strategy  rate" in proc.stdout  # axis columns first
    assert "CANCELLED" in proc.stdout and "Findings:" in proc.stdout
    with open(swept / "summary.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header == ["name", *AXES, *COLUMNS]
    rows = _rows(swept)
    assert [r["name"] for r in rows] == [
        f"{c}-{s}-rate{r}" for c in ("ok", "stuck") for s in ("walk", "rmap")
        for r in (4000, 40000)]
    for row in rows:
        assert row["mmu.strategy"] == row["strategy"]
        if row["comparison"] == "ok":
            assert row["status"] == "completed" and row["verified"] == "True"
            assert float(row["downtime-ms"]) > 0 and float(row["total-time-ms"]) > 0
            assert int(row["dirty-sync-count"]) == int(row["rounds"])  # the setup's begins one
            assert float(row["harvest-modeled-ms"]) > 0
            assert row["harvest-branches"].startswith(row["strategy"])
        else:
            assert row["status"] == "cancelled" and row["converged"] == "False"
            assert row["precopy-passes"] == "3" and row["verified"] == "False"
    for name in PLOTS:
        path = swept / name
        if HAVE_MATPLOTLIB:
            assert path.stat().st_size > 10_000, name
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        else:
            assert not path.exists()


def test_summary_matches_the_reports(swept):
    precopy("report", str(swept), "--no-plots")
    lines = {json.loads(x)["name"]: json.loads(x)
             for x in (swept / "results.jsonl").read_text().splitlines()}
    for row in _rows(swept):
        report = lines[row["name"]]["report"]
        if report["status"] == "completed":
            assert float(row["downtime-ms"]) == pytest.approx(report["downtime"], abs=1e-3)
        else:  # no downtime nor total time to speak of
            assert row["downtime-ms"] == row["total-time-ms"] == ""
        assert int(row["transferred-bytes"]) == report["ram"]["transferred"]
        assert float(row["vcpu-stall-ms"]) == pytest.approx(
            report["guest"]["vcpu-stall-ns"] / 1e6, abs=1e-6)
        hold = sum(r["harvest"]["lock-hold-ns"] for r in report["rounds"])
        assert float(row["mmu-lock-hold-ms"]) == pytest.approx(hold / 1e6, abs=1e-6)


def test_report_without_matplotlib_still_writes_the_csv(swept, tmp_path):
    fake = tmp_path / "site"
    (fake / "matplotlib").mkdir(parents=True)
    (fake / "matplotlib" / "__init__.py").write_text("raise ImportError('no matplotlib here')\n")
    out = tmp_path / "copy"
    out.mkdir()
    for name in ("results.jsonl", "sweep.json"):
        (out / name).write_bytes((swept / name).read_bytes())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), str(ROOT)])}
    proc = precopy("report", str(out), env=env)
    assert proc.returncode == 0, proc.stderr
    assert "pip install -e '.[plot]'" in proc.stdout
    assert (out / "summary.csv").stat().st_size > 0
    assert not any((out / name).exists() for name in PLOTS)


def test_report_x_axis_and_bad_folders(swept, tmp_path):
    proc = precopy("report", str(swept), "--no-plots", "--x", "mmu.strategy")
    assert proc.returncode == 2 and "not a numeric axis" in proc.stderr
    proc = precopy("report", str(tmp_path / "nowhere"))
    assert proc.returncode == 2 and "no such folder" in proc.stderr
    proc = precopy("report", str(tmp_path))
    assert proc.returncode == 2 and "no results.jsonl" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_harvests_expand_a_multi_slot_sync_and_fit_on_ram_only():
    from migrate.experiments.metrics import harvests
    from migrate.experiments.results import PointResult

    def rec(slot: str, branch: str, dirty: int) -> dict:
        return {"slot": slot, "strategy": "heuristic", "branch": branch, "modeled-ns": 1000,
                "nr-dirty-pages": dirty, "n-used-mmu-pages": 100, "lock-hold-ns": 10}

    merged = {**rec("ram+vga", "rmap+walk", 1050),
              "slots": [rec("ram", "rmap", 50), rec("vga", "walk", 1000)]}
    report = {"config": {"mmu": {"shape": "tdp", "strategy": "heuristic"}},
              "rounds": [{"round": 1, "phase": "precopy", "harvest": merged},
                         {"round": 2, "phase": "precopy", "harvest": rec("ram", "walk", 500)}]}
    hs = harvests(PointResult(name="p", report=Report.from_dict(report)))
    assert [(h.slot, h.branch, h.nr_dirty_pages) for h in hs] == [
        ("ram", "rmap", 50), ("vga", "walk", 1000), ("ram", "walk", 500)]
    assert [h.of_ram for h in hs] == [True, False, True]


# --- what a reader of the plots trips over (issue 10.19) ------------------------------------


def _figures(swept: Path, *, reverse: bool, one_shape: bool = False) -> dict:
    """Every figure `report` draws for the fixture's sweep, the rate axis listed largest
    first in the sweep (and the results in that order) when *reverse*, with an axis of one
    value (`mmu.shape` = tdp) first when *one_shape*."""
    import dataclasses

    from migrate.experiments import plots
    from migrate.experiments.report import load
    from migrate.experiments.results import ResultsFolder

    axes, results, _, _ = load(ResultsFolder(swept))
    if reverse:
        axes = {a: list(reversed(v)) if a == "guest.workload.rate" else v
                for a, v in axes.items()}
        results = list(reversed(results))
    if one_shape:
        axes = {"mmu.shape": ["tdp"], **axes}
        results = [dataclasses.replace(r, params={"mmu.shape": "tdp", **r.params})
                   for r in results]
    return dict(plots.figures(results, axes, "guest.workload.rate"))


@pytest.fixture(scope="module")
def figures(swept):
    import matplotlib.pyplot as plt

    figs = _figures(swept, reverse=True)
    yield figs
    for fig in figs.values():
        plt.close(fig)


def test_every_plot_is_drawn(figures):
    assert set(figures) == set(PLOTS)


def test_titles_and_footers_fit_in_the_figure(figures):
    # the fixture's sweep has one MMU shape: a one-panel crossover.png, whose long title
    # and config line were cut at both sides
    assert len(figures["crossover.png"].axes) == 1
    for name, fig in figures.items():
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        texts = list(dict.fromkeys([*fig.texts, fig._suptitle]))  # the title, the config
        assert len(texts) == 2 and all(t is not None and t.get_text() for t in texts), name
        for text in texts:
            box = text.get_window_extent(renderer)
            assert box.x0 >= 0 and box.x1 <= fig.bbox.width, (name, text.get_text())
            assert box.y0 >= 0 and box.y1 <= fig.bbox.height, (name, text.get_text())


def test_every_log_axis_ends_on_labelled_ticks(figures):
    seen = 0
    for name, fig in figures.items():
        fig.canvas.draw()
        for ax in fig.axes:
            for axis, limits in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
                if axis.get_scale() != "log":
                    continue
                ticks = axis.get_major_ticks()
                if not any(tick.label1.get_visible() for tick in ticks):
                    continue  # a shared axis, labelled on its neighbour's panel
                seen += 1
                labelled = {tick.get_loc() for tick in ticks
                            if tick.label1.get_visible() and tick.label1.get_text()}
                for end in limits:
                    assert any(abs(end - loc) <= 1e-9 * end for loc in labelled), (name, end)
    assert seen >= 3  # crossover's two axes, convergence's y at least


def _legend(ax) -> list[tuple[str, tuple]]:
    from matplotlib.colors import to_rgba

    legend = ax.get_legend()
    out = []
    for handle, text in zip(legend.legend_handles, legend.get_texts(), strict=True):
        color = handle.get_facecolor() if hasattr(handle, "get_facecolor") else None
        if hasattr(handle, "get_color") and not hasattr(handle, "get_height"):
            color = handle.get_color()
        out.append((text.get_text(), to_rgba(color)))
    return out


def test_colours_run_with_the_values_not_the_sweep_files_order(figures):
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("viridis")
    expected = [f"{c}-rate{r}" for c in ("ok", "stuck") for r in (4000, 40000)]
    ramp = [cmap(i / (len(expected) - 1)) for i in range(len(expected))]
    for name in ("convergence.png", "guest-cost.png"):
        fig = figures[name]
        legends = [ax for ax in fig.axes if ax.get_legend() is not None]
        assert legends, name
        for ax in legends:
            entries = [(label, color) for label, color in _legend(ax) if label in expected]
            assert [label for label, _ in entries] == expected, name
            assert [color for _, color in entries] == ramp, name


def test_an_axis_of_one_value_names_no_series(swept):
    import matplotlib.pyplot as plt

    plain, one = _figures(swept, reverse=False), _figures(swept, reverse=False, one_shape=True)
    try:
        for name in ("downtime.png", "convergence.png", "guest-cost.png"):
            labels = [[label for label, _ in _legend(ax)] for ax in one[name].axes
                      if ax.get_legend() is not None]
            assert labels == [[label for label, _ in _legend(ax)] for ax in plain[name].axes
                              if ax.get_legend() is not None], name
            assert not any(label.startswith("tdp") for group in labels for label in group)
    finally:
        for fig in [*plain.values(), *one.values()]:
            plt.close(fig)


def test_the_guest_cost_legend_is_readable(figures):
    legend = figures["guest-cost.png"].axes[-1].get_legend()
    assert min(t.get_fontsize() for t in legend.get_texts()) >= 8


def test_plural():
    from migrate.experiments.plots import plural

    assert plural(1, "harvest") == "1 harvest"
    assert plural(0, "harvest") == "0 harvests" and plural(2, "harvest") == "2 harvests"
