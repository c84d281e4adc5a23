"""The sweep's PNG figures. matplotlib is imported here only, and only when a plot is drawn.

1. crossover.png: harvest modeled time against nr_dirty_pages / n_used_mmu_pages
   per strategy, log-log, one panel per MMU shape, the heuristic's threshold
   and the fitted crossover marked;
2. downtime.png: downtime and total time against the x axis (the workload
   rate by default), one line per series, the points that did not converge
   ringed;
3. convergence.png: the dirty memory left at each sync over time, one line
   per point, one panel per strategy;
4. guest-cost.png: the guest's cost per strategy: write faults, vCPU stall
   on mmu_lock, mmu_lock hold time.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from migrate.experiments import analysis
from migrate.experiments.analysis import (
    STRATEGY_AXIS,
    axis_numbers,
    axis_scale,
    group_by,
    series_label,
)
from migrate.experiments.metrics import converged, harvests, precopy_passes, row
from migrate.experiments.results import PointResult
from migrate.experiments.sweep import COMPARISON
from migrate.report import config_value
from migrate.units import MIB
from vmmodel import PAGE_SIZE

DPI = 100
MARKERS = "osD^v<>pXh*"
STYLES = ("-", "--", "-.", ":")
STRATEGY_COLORS = {"walk": "tab:blue", "rmap": "tab:orange", "heuristic": "tab:green"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figures(results: list[PointResult], axes: dict[str, list[Any]],
            x_axis: str | None) -> Iterator[tuple[str, Any]]:
    """Each plot the results support, as (file name, figure); the caller closes it.

    Raise `ImportError` if matplotlib is not installed.
    """
    plt = _pyplot()
    done = [r for r in results if r.report is not None]
    for name, draw in (("crossover.png", lambda: _crossover(plt, done)),
                       ("downtime.png", lambda: _downtime(plt, done, axes, x_axis)),
                       ("convergence.png", lambda: _convergence(plt, done, axes)),
                       ("guest-cost.png", lambda: _guest_cost(plt, done, axes))):
        fig = draw()
        if fig is not None:
            yield name, fig


def write_plots(folder: Path, results: list[PointResult], axes: dict[str, list[Any]],
                x_axis: str | None) -> list[Path]:
    """Draw every plot the results support; return the files written.

    Raise `ImportError` if matplotlib is not installed.
    """
    plt = _pyplot()
    written = []
    for name, fig in figures(results, axes, x_axis):
        path = folder / name
        _save(fig, path)
        plt.close(fig)
        written.append(path)
    return written


def _save(fig: Any, path: Path) -> None:
    """Write a PNG with a 256-colour palette: a third of the size, the same to the eye."""
    from io import BytesIO

    from PIL import Image  # matplotlib's own dependency

    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    image = Image.open(buffer).convert("RGB").quantize(colors=256,
                                                       method=Image.Quantize.MEDIANCUT)
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, format="PNG", optimize=True)
    tmp.replace(path)


def plural(n: int, word: str) -> str:
    """"1 harvest", "2 harvests"."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _wrap(fig: Any, text: str, fontsize: float) -> str:
    """*text* broken into lines that fit the figure's width (a narrow one-panel figure)."""
    width_pt = fig.get_figwidth() * 72 * 0.96
    chars = max(20, int(width_pt / (fontsize * 0.56)))  # DejaVu Sans: ~0.56 em a character
    return "\n".join(textwrap.wrap(text, chars))


def _title(fig: Any, text: str) -> None:
    fig.suptitle(_wrap(fig, text, 10), fontsize=10)


def _subtitle(fig: Any, results: list[PointResult]) -> Any:
    """The config line at the foot of the figure; return its `Text`."""
    return fig.text(0.5, 0.005, _wrap(fig, analysis.describe_config(results), 8),
                    ha="center", va="bottom", fontsize=8, color="0.35")


def _layout(fig: Any, footer: Any) -> None:
    """Label the log axes, then tight_layout, leaving room for the (wrapped) config line.

    The labels come first: they change the tick labels' widths that the layout makes room for.
    """
    _label_log_axes(fig)
    footer_lines = footer.get_text().count("\n") + 1
    fig.tight_layout(rect=(0, 0.03 * footer_lines * 4.8 / fig.get_figheight(), 1, 1))


def _plain(v: float, _: Any = None) -> str:
    """Tick labels "0.1", "10", "1000000" rather than powers of ten."""
    return f"{v:.12g}"


def _log_ticks(lo: float, hi: float, subs: tuple[float, ...]) -> tuple[float, float]:
    """The ticks at or below *lo* and at or above *hi*, on 10^k x *subs*."""
    def ticks(around: float) -> list[float]:
        k = math.floor(math.log10(around))
        return [m * 10.0 ** e for e in (k - 1, k, k + 1) for m in subs]

    below = max(t for t in ticks(lo) if t <= lo * (1 + 1e-9))
    above = min(t for t in ticks(hi) if t >= hi * (1 - 1e-9))
    return below, above


def _label_log_axes(fig: Any) -> None:
    """Every log axis of *fig* ends on labelled ticks, so its top and bottom can be read.

    The limits widen to the next 1-2-5 value out. Within three decades every 1-2-5 value
    is a labelled tick; beyond, the two ends and the decades between them (not those
    within a factor 2.5 of an end, whose labels would collide). Minor ticks stay
    unlabelled.
    """
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

    for ax in fig.axes:
        for axis, get, set_ in ((ax.xaxis, ax.get_xlim, ax.set_xlim),
                                (ax.yaxis, ax.get_ylim, ax.set_ylim)):
            if axis.get_scale() != "log":
                continue
            lo, hi = sorted(get())
            if not (0 < lo < hi and math.isfinite(hi)):
                continue
            lo, hi = _log_ticks(lo, hi, (1.0, 2.0, 5.0))
            set_(lo, hi)
            if math.log10(hi / lo) <= 3:
                axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            else:
                decades = [10.0 ** k for k in range(math.ceil(math.log10(lo)),
                                                    math.floor(math.log10(hi)) + 1)]
                inner = [d for d in decades if d / lo >= 2.5 and hi / d >= 2.5]
                axis.set_major_locator(FixedLocator([lo, *inner, hi]))
            axis.set_major_formatter(FuncFormatter(_plain))
            axis.set_minor_formatter(NullFormatter())


def _varied(axes: dict[str, list[Any]], but: str | None) -> list[str]:
    """The axes other than *but* that take more than one value: a one-shape sweep's
    `mmu.shape` names no series ("tdp-walk") and hides no panel."""
    return [a for a in axes if a != but and len(axes[a]) > 1]


def _value_order(axes: dict[str, list[Any]], rest: list[str]) -> Any:
    """Sort key of a point on *rest*: numbers by size, other values in the sweep's order.

    Colours run along a colour map in this order, so that the darkest is the smallest
    value, whatever order the sweep file lists them in.
    """
    numeric = {a: axis_numbers(a, list(axes.get(a, []))) is not None for a in rest}

    def key(r: PointResult) -> tuple:
        parts = []
        for a in rest:
            value = r.params.get(a)
            if numeric[a] and value is not None:
                parts.append(axis_numbers(a, [value])[0])
            else:
                values = axes.get(a, [])
                parts.append(values.index(value) if value in values else len(values))
        return tuple(parts)

    return key


def _ordered_series(results: list[PointResult], axes: dict[str, list[Any]],
                    rest: list[str]) -> list[str]:
    """The series labels on *rest*, smallest value first."""
    ordered = sorted(results, key=_value_order(axes, rest))
    return list(dict.fromkeys(series_label(r.params, rest) for r in ordered))


def _ranked_colors(plt: Any, n: int) -> list[Any]:
    """*n* colours along viridis, dark to light."""
    cmap = plt.get_cmap("viridis")
    return [cmap(i / max(1, n - 1)) for i in range(n)] if n > 1 else ["tab:blue"]


def _log_if_wide(ax: Any, which: str, values: list[float], factor: float = 20.0) -> None:
    positive = [v for v in values if v > 0]
    if positive and max(positive) / min(positive) > factor:
        (ax.set_xscale if which == "x" else ax.set_yscale)("log")


# --- 1. the crossover -----------------------------------------------------------------------


def _crossover(plt: Any, results: list[PointResult]) -> Any:
    by_shape: dict[str, list] = {}
    skipped = 0
    for r in results:
        for h in harvests(r):
            if h.nr_dirty_pages == 0 or not h.of_ram or not h.n_used_mmu_pages:
                skipped += 1
                continue
            by_shape.setdefault(h.shape, []).append(h)
    if not by_shape:
        return None
    fits = {c.shape: c for c in analysis.crossovers(results)}
    shapes = [s for s in ("tdp", "shadow") if s in by_shape] + [
        s for s in by_shape if s not in ("tdp", "shadow")]
    fig, axs = plt.subplots(1, len(shapes), figsize=(max(9.0, 5.5 * len(shapes) + 1), 4.8),
                            squeeze=False)
    for ax, shape in zip(axs[0], shapes, strict=True):
        hs = by_shape[shape]
        groups = {}
        for h in hs:
            if h.strategy == "heuristic":
                key = f"heuristic, took {h.branch}"
            else:
                key = h.strategy
            groups.setdefault(key, []).append(h)
        for key in sorted(groups, key=lambda k: (k.startswith("heuristic"), k)):
            pts = groups[key]
            heur = key.startswith("heuristic")
            branch = key.rsplit(" ", 1)[-1] if heur else key
            ax.scatter([h.dirty_ratio for h in pts], [h.modeled_ns / 1e3 for h in pts],
                       label=f"{key} ({len(pts)})",
                       marker=("^" if branch == "walk" else "v") if heur else "o",
                       s=46 if heur else 22,
                       facecolors="none" if heur else STRATEGY_COLORS.get(branch, "0.5"),
                       edgecolors=STRATEGY_COLORS["heuristic"] if heur else "none",
                       alpha=0.9 if heur else 0.55, zorder=3 if heur else 2)
        ax.axvline(1.0, color="black", linestyle="--", linewidth=1,
                   label="heuristic threshold: nr_dirty = n_used")
        fit = fits.get(shape)
        if fit is not None and fit.ratio is not None:
            ratios = [h.dirty_ratio for h in hs]
            lo, hi = min(ratios) / 1.5, max(ratios) * 1.5
            xs = [lo * (hi / lo) ** (i / 60) for i in range(61)]
            n_used = fit.n_used_mmu_pages
            ax.plot(xs, [fit.walk_ns / 1e3] * len(xs), color=STRATEGY_COLORS["walk"],
                    linewidth=0.8, alpha=0.6)
            ax.plot(xs, [fit.rmap_ns(x * n_used) / 1e3 for x in xs],
                    color=STRATEGY_COLORS["rmap"], linewidth=0.8, alpha=0.6)
            ax.axvline(fit.ratio, color="tab:red", linestyle=":", linewidth=1.5,
                       label=f"measured crossover: {fit.ratio:.3g}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        n_used = sorted({h.n_used_mmu_pages for h in hs})
        used = f"{n_used[0]}" if len(n_used) == 1 else f"{n_used[0]}-{n_used[-1]}"
        ax.set_title(f"{shape} MMU (n_used_mmu_pages {used})")
        ax.set_xlabel("nr_dirty_pages / n_used_mmu_pages at the harvest")
        ax.set_ylabel("modeled harvest time (us of kernel time)")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    note = (f"; {plural(skipped, 'harvest')} without dirty pages or of the framebuffer slot "
            "not shown")
    _title(fig, "Harvest cost against the dirty ratio, every sync of every point"
           + (note if skipped else ""))
    _layout(fig, _subtitle(fig, results))
    return fig


# --- 2. downtime and total time ---------------------------------------------------------------


def _downtime(plt: Any, results: list[PointResult], axes: dict[str, list[Any]],
              x_axis: str | None) -> Any:
    if x_axis is None:
        return None
    scale = axis_scale(x_axis)
    rest = _varied(axes, x_axis)
    groups = group_by(sorted(results, key=_value_order(axes, rest)), rest)
    lines: dict[str, list[tuple[float, PointResult]]] = {}
    for label, members in groups.items():
        pts = sorted(((scale.convert(r.params[x_axis]), r) for r in members
                      if x_axis in r.params and r.status == "completed"), key=lambda p: p[0])
        if pts:
            lines[label] = pts
    if not lines:
        return None
    # With the strategy as the only other axis, a third panel shows how far it moves downtime.
    diff = rest == [STRATEGY_AXIS] and len(lines) > 1
    fig, axs = plt.subplots(1, 3 if diff else 2, figsize=(17 if diff else 12, 4.8))
    down_ax, total_ax = axs[0], axs[1]
    bad: list[tuple[float, float, float]] = []
    for i, (label, pts) in enumerate(lines.items()):
        xs = [x for x, _ in pts]
        down = [r.report.downtime_ms for _, r in pts]
        total = [r.report.total_time_ms / 1e3 for _, r in pts]
        style = _style(i)
        down_ax.plot(xs, down, label=label, **style)
        total_ax.plot(xs, total, label=label, **style)
        bad += [(x, d, t) for (x, r), d, t in zip(pts, down, total, strict=True)
                if converged(r.report) is False]
    if bad:
        ring = {"s": 140, "facecolors": "none", "edgecolors": "tab:red", "linewidths": 1.4,
                "zorder": 4, "label": "did not converge: forced after max-iterations"}
        down_ax.scatter([b[0] for b in bad], [b[1] for b in bad], **ring)
        total_ax.scatter([b[0] for b in bad], [b[2] for b in bad], **ring)
    limits = {row(r, [])["downtime-limit-ms"] for r in results}
    if len(limits) == 1 and "" not in limits:
        down_ax.axhline(limits.pop(), color="black", linestyle="--", linewidth=1,
                        label="downtime-limit")
    xs_all = [x for pts in lines.values() for x, _ in pts]
    downs = [r.report.downtime_ms for pts in lines.values() for _, r in pts]
    totals = [r.report.total_time_ms / 1e3 for pts in lines.values() for _, r in pts]
    for ax, values, what in ((down_ax, downs, "downtime (ms, pause to resumed)"),
                             (total_ax, totals, "total time (s, setup to resumed)")):
        _log_if_wide(ax, "x", xs_all, 9.0)
        _log_if_wide(ax, "y", values)
        ax.set_xlabel(scale.title)
        ax.set_ylabel(what)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, title=" / ".join(rest) if rest else None, title_fontsize=7)
    down_ax.set_title("Downtime")
    total_ax.set_title("Total migration time")
    if diff:
        _downtime_difference(axs[2], lines, scale.title, xs_all)
    _title(fig, f"Downtime and total time against {x_axis}")
    _layout(fig, _subtitle(fig, results))
    return fig


def _style(i: int) -> dict[str, Any]:
    return {"color": f"C{i % 10}", "marker": MARKERS[i % len(MARKERS)],
            "linestyle": STYLES[i % len(STYLES)],
            "markersize": 5, "linewidth": 1.3, "alpha": 0.85}


def _downtime_difference(ax: Any, lines: dict[str, list[tuple[float, PointResult]]],
                         x_title: str, xs_all: list[float]) -> None:
    """Each strategy's downtime minus the first strategy's, at the same x."""
    labels = list(lines)
    base = {x: r.report.downtime_ms for x, r in lines[labels[0]]}
    for i, label in enumerate(labels[1:], start=1):
        pts = [(x, r.report.downtime_ms - base[x]) for x, r in lines[label] if x in base]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=f"{label} - {labels[0]}",
                **_style(i))
    ax.axhline(0, color="black", linewidth=0.8)
    _log_if_wide(ax, "x", xs_all, 9.0)
    ax.set_xlabel(x_title)
    ax.set_ylabel(f"downtime minus {labels[0]}'s (ms)")
    ax.set_title("What the strategy changes in downtime")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7)


# --- 3. convergence ----------------------------------------------------------------------------


def _panel_axis(axes: list[str], results: list[PointResult]) -> str | None:
    if STRATEGY_AXIS in axes:
        return STRATEGY_AXIS
    if COMPARISON in axes:
        return COMPARISON
    return None


def _convergence(plt: Any, results: list[PointResult], axes: dict[str, list[Any]]) -> Any:
    if not results:
        return None
    panel_axis = _panel_axis(list(axes), results)
    panels = group_by(results, [panel_axis]) if panel_axis else {"": results}
    rest = _varied(axes, panel_axis)
    fig, axs = plt.subplots(1, len(panels), figsize=(max(9.0, 4.6 * len(panels) + 3), 4.8),
                            squeeze=False, sharey=True)
    # one colour per series across the panels, which share one legend
    series = _ordered_series(results, axes, rest)
    color_of = dict(zip(series, _ranked_colors(plt, len(series)), strict=True))
    for ax, (panel, members) in zip(axs[0], panels.items(), strict=True):
        thresholds = set()
        for r in sorted(members, key=_value_order(axes, rest)):
            color = color_of[series_label(r.params, rest)]
            report = r.report
            passes = precopy_passes(report)
            if not passes:
                continue
            t = [report.setup_time_ms / 1e3]
            left = [report.ram.total / MIB]
            # what is left to send after each sync: the next record's pages when it began
            for p, after in zip(passes, report.rounds[1:], strict=False):
                t.append((p.start_ms + p.duration_ms) / 1e3)
                left.append(after.dirty_pages * PAGE_SIZE / MIB)
            label = series_label(r.params, rest) if rest else r.name
            ax.plot(t, [max(v, 1e-3) for v in left], marker=".", color=color, linewidth=1.2,
                    label=label)
            ok = converged(report)
            ax.plot(t[-1:], [max(left[-1], 1e-3)], marker="o" if ok else "X",
                    color="tab:red" if ok is False else color, markersize=7, linestyle="none")
            if passes[-1].threshold_size:
                thresholds.add(round(passes[-1].threshold_size / MIB, 1))
        if len(thresholds) == 1:
            ax.axhline(thresholds.pop(), color="black", linestyle="--", linewidth=1,
                       label="switchover threshold: bandwidth x downtime-limit")
        ax.set_yscale("log")
        ax.set_xlabel("time since the migration started (s)")
        ax.set_title(f"{panel_axis}: {panel}" if panel_axis else "every point", fontsize=9)
        ax.grid(True, which="major", alpha=0.3)
    # outside the panels, where it hides no line
    entries: dict[str, Any] = {}
    for ax in axs[0]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    axs[0][-1].legend(list(entries.values()), list(entries), fontsize=8,
                      ncol=2 if len(entries) > 16 else 1,
                      title=" / ".join(rest) if rest else None, title_fontsize=8,
                      bbox_to_anchor=(1.02, 1), loc="upper left")
    axs[0][0].set_ylabel("dirty memory left to send at each sync (MiB)")
    _title(fig, "Convergence, sync by sync: what is left to send after each sync; a red X "
           "marks a point forced to stop-and-copy")
    _layout(fig, _subtitle(fig, results))
    return fig


# --- 4. the guest's cost ----------------------------------------------------------------------


def _guest_cost(plt: Any, results: list[PointResult], axes: dict[str, list[Any]]) -> Any:
    if not results:
        return None
    cluster_axis = _panel_axis(list(axes), results)
    if cluster_axis is None:
        clusters = {}
        for r in results:
            clusters.setdefault(str(config_value(r.report, "mmu.strategy", "?")), []).append(r)
    else:
        clusters = group_by(results, [cluster_axis])
    rest = _varied(axes, cluster_axis)
    series = _ordered_series(results, axes, rest)
    colors = _ranked_colors(plt, len(series))
    metrics = (("write-faults", "write faults (count)"),
               ("vcpu-stall-ms", "vCPU stall waiting for mmu_lock (ms)"),
               ("mmu-lock-hold-ms", "mmu_lock hold time in harvests (ms)"))
    fig, axs = plt.subplots(1, 3, figsize=(14, 4.8))
    width = 0.8 / max(1, len(series))
    for ax, (column, title) in zip(axs, metrics, strict=True):
        bars = []
        for j, label in enumerate(series):
            xs, ys = [], []
            for i, members in enumerate(clusters.values()):
                for r in members:
                    if series_label(r.params, rest) == label:
                        value = row(r, [])[column]
                        if value != "":
                            xs.append(i - 0.4 + width * (j + 0.5))
                            ys.append(float(value))
            bars.append((xs, ys))
        values_all = [y for _, ys in bars for y in ys]
        if title.endswith("(ms)") and 0 < max(values_all, default=0) < 0.1:
            # "0.00014 ms" reads badly: microseconds
            title = title.replace("(ms)", "(us)")
            bars = [(xs, [y * 1e3 for y in ys]) for xs, ys in bars]
            values_all = [y * 1e3 for y in values_all]
        for (xs, ys), label, color in zip(bars, series, colors, strict=True):
            ax.bar(xs, ys, width=width, color=color, label=label)
        ax.set_xticks(range(len(clusters)), list(clusters), fontsize=8)
        ax.set_xlabel(cluster_axis or "mmu.strategy")
        ax.set_ylabel(title)
        _log_if_wide(ax, "y", values_all, 100.0)
        if ax.get_yscale() == "linear":
            ax.set_ylim(bottom=0, top=max([*values_all, 0.0]) * 1.1 or 1.0)
        ax.grid(True, axis="y", which="major", alpha=0.3)
        ax.set_title(title.split(" (")[0], fontsize=9)
    axs[-1].legend(fontsize=8, ncol=2 if len(series) > 12 else 1,
                   title=" / ".join(rest) if rest else None, title_fontsize=8,
                   bbox_to_anchor=(1.02, 1), loc="upper left")
    _title(fig, "The guest's cost of dirty tracking, per strategy (whole migration)")
    _layout(fig, _subtitle(fig, results))
    return fig
