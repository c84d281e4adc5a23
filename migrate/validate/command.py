"""`precopy validate [RUNS.jsonl ...] [--json] [--tolerance 10%] [--plot DIR]`.

Without a file, the reference runs shipped in configs/reference/qemu-7.2-tcg/.
Exit status: 0 when every run agrees (see `compare`), 1 otherwise, 2 for bad
input (a file that is not run records, a bad tolerance or plot folder).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from migrate.validate import compare as cmp
from migrate.validate.measure import REFERENCE_RUNS, other_nonzero_pages
from migrate.validate.records import RecordError, read_records
from migrate.validate.scenario import COSTS, configure

DEFAULT_TOLERANCE = 0.10
MAX_TOLERANCE = 10.0  # 1000 %: anything larger judges nothing
PLOT_HINT = "pip install -e '.[plot]'"


def parse_tolerance(text: str) -> float:
    """`10%` or `0.1` -> 0.1. Raise `ValueError` for anything else, negative or huge."""
    body = text.strip()
    percent = body.endswith("%")
    try:
        value = float(body[:-1] if percent else body)
    except ValueError:
        raise ValueError(f"{text!r} is not a share such as 10% or 0.1") from None
    value = value / 100 if percent else value
    if not (math.isfinite(value) and 0 <= value <= MAX_TOLERANCE):
        raise ValueError(f"{text!r} is not between 0% and {MAX_TOLERANCE * 100:g}%")
    return value


def _check_plot_dir(folder: Path | None) -> None:
    if folder is None:
        return
    if folder.exists() and not folder.is_dir():
        raise RecordError(f"--plot {folder}: is a file, not a folder")
    if not folder.exists() and not folder.parent.is_dir():
        raise RecordError(f"--plot {folder}: no such folder {str(folder.parent)!r}")
    try:  # made now, not after every run has taken its time
        folder.mkdir(exist_ok=True)
    except OSError as err:
        raise RecordError(f"--plot {folder}: cannot make it ({err.strerror})") from None


def run_validate(paths: Sequence[Path], *, tolerance: float = DEFAULT_TOLERANCE,
                 as_json: bool = False, plot_dir: Path | None = None,
                 overrides: Sequence[str] = (),
                 say: Callable[[str], None] = cmp.say_stderr) -> int:
    """Validate precopy against the runs in *paths* (none: the shipped reference runs).

    Everything is read and configured before anything runs. Raise `RecordError` for
    bad input; `compare.Interrupted` on Ctrl-C.
    """
    _check_plot_dir(plot_dir)
    records = read_records(list(paths) or [REFERENCE_RUNS])
    # The guest's data besides the dirtier's: the idle runs among these, else the reference's.
    idle = [r for r in records if r.config.rate_pages_s == 0 and "normal" in r.result.ram]
    other = other_nonzero_pages(idle or read_records([REFERENCE_RUNS]))
    runs = [configure(r, other, overrides) for r in records]
    comparisons = cmp.run_all(runs, say=say)
    if as_json:
        print(json.dumps(cmp.to_json(comparisons, tolerance, costs=COSTS), indent=2))
    else:
        print(cmp.format_table(comparisons, tolerance))
    if plot_dir is not None:
        from migrate.validate.plot import write_plots  # matplotlib only when drawing

        try:
            written = write_plots(plot_dir, [(c.record, x) for c, x in
                                             zip(runs, comparisons, strict=True)])
            say(f"wrote {len(written)} plots in {plot_dir}")
        except ImportError:
            say(f"no plots: matplotlib is not installed (get it with: {PLOT_HINT})")
    sys.stdout.flush()
    return cmp.exit_code(comparisons, tolerance)
