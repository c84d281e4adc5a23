"""Experiments: sweeps of many migrations, their results, and reports on them.

One noun per module, as QEMU's guestperf has it:

- `sweep`: a sweep file (a base scenario and the axes to vary) expanded into
  named points;
- `results`: the output folder (`sweep.json`, `results.jsonl`), one
  `PointResult` per point;
- `runner`: runs the points in parallel, each a `precopy run` process pair;
- `progress`: the one-line progress bar and its ETA;
- `metrics`: one point's figures as a flat row (the CSV's columns);
- `analysis`: what the rows say (the harvest crossover, the strategy's effect);
- `table`: the terminal table and `summary.csv`;
- `plots`: the PNG figures (matplotlib, imported only here);
- `report`: `precopy report`, tying the last four together.
"""

from __future__ import annotations


class ExperimentError(Exception):
    """A sweep or results folder that cannot be used; the one-line message says why."""
