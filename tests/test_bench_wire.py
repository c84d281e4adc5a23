"""`precopy bench wire --quick --json` at a tiny size: it runs, verifies, and has its keys.

The bench reports; it does not pass or fail on its targets, so only the
structure and the verdicts are checked here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from migrate.bench import wire as bench
from tests.procs import precopy

RUNS = ("random", "zero", "mixed", "mixed-lz4", "random-2ch", "random-4ch")
FIGURES = ("pages-per-s", "mb-per-s", "ceiling-mb-per-s", "ratio-to-ceiling",
           "first-pass-mb-per-s", "wire-mb-per-s", "compression-ratio")


@pytest.fixture(scope="module")
def result():
    proc = precopy("bench", "wire", "--quick", "--json", "--size", "2MiB", timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_keys_and_verdicts(result):
    assert set(RUNS) | {"ceiling-mb-per-s", "targets", "met", "size-bytes", "passes"} <= set(result)
    assert result["size-bytes"] == 2 << 20
    for name in RUNS:
        run = result[name]
        for key in FIGURES:
            assert isinstance(run[key], float) and run[key] > 0, (name, key)
        assert run["verified"] is True, name
        assert run["ceiling-mb-per-s"] == result["ceiling-mb-per-s"]
        assert run["ratio-to-ceiling"] == pytest.approx(run["mb-per-s"] / run["ceiling-mb-per-s"])
        assert set(run["cpu-ms-per-gib"]) == {"source", "destination"}
        assert len(run["pass-mb-per-s"]) == result["passes"]
    assert result["mixed-lz4"]["compression-ratio"] > 1.5
    assert result["zero"]["wire-mb-per-s"] < result["zero"]["mb-per-s"] / 100  # flags only
    assert (result["random-2ch"]["channels"], result["random-4ch"]["channels"]) == (2, 4)
    assert set(result["met"]) == set(bench.TARGETS)


def test_table(result):
    table = bench.format_table(result)
    assert "ceiling" in table and "targets" in table
    assert all(name in table for name in RUNS)


def test_contents():
    npages = 512
    zero = bench.zero_memory(npages)
    assert not zero.any()
    mixed = bench.mixed_memory(npages)
    is_zero = ~mixed.any(axis=1)
    assert 0.15 < is_zero.mean() < 0.35  # about a quarter of the pages
    assert len(np.unique(mixed[~is_zero], axis=0)) == int((~is_zero).sum())  # all differ


def test_size_must_be_whole_pages():
    with pytest.raises(ValueError):
        bench.parse_size("1000")
    assert bench.parse_size("1GiB") == 1 << 30
    proc = precopy("bench", "wire", "--size", "12345")
    assert proc.returncode == 2 and "--size" in proc.stderr
