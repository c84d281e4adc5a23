"""`precopy bench mmu` at quick sizes: the keys, types and the crossover's shape.

The bench reports; it does not pass or fail on its targets, so only the structure and the
deterministic parts (the crossover's counts and branches) are checked here.
"""

from __future__ import annotations

import json

import pytest

from migrate.bench import mmu as bench

FIGURES = ("writes-per-s", "walk-16g-ms", "rmap-ns-per-gfn")
RECORD_KEYS = {"shape", "ratio", "dirty-pages", "n-used-mmu-pages", "walk-modeled-ns",
               "rmap-modeled-ns", "heuristic-branch"}


@pytest.fixture(scope="module")
def result():
    return bench.run(quick=True)


def test_keys_and_types(result):
    assert set(FIGURES) | {"crossover", "targets", "met", "python", "numpy",
                           "cpu-count"} <= set(result)
    for key in FIGURES:
        assert isinstance(result[key], float) and result[key] > 0, key
    assert result["targets"] == {"writes-per-s": 20e6, "walk-16g-ms": 30.0,
                                 "rmap-ns-per-gfn": 300.0}
    assert set(result["met"]) == set(FIGURES)
    assert all(isinstance(v, bool) for v in result["met"].values())
    assert result["met"]["writes-per-s"] == (result["writes-per-s"] >= 20e6)
    assert result["met"]["walk-16g-ms"] == (result["walk-16g-ms"] <= 30.0)
    assert isinstance(result["python"], str) and isinstance(result["numpy"], str)
    assert isinstance(result["cpu-count"], int) and result["cpu-count"] >= 1
    assert json.loads(json.dumps(result)) == result  # plain JSON, as `--json` prints it


def test_crossover_covers_both_shapes_and_every_ratio(result):
    records = result["crossover"]
    assert all(set(r) == RECORD_KEYS for r in records)
    for shape in ("tdp", "shadow"):
        ratios = [r["ratio"] for r in records if r["shape"] == shape]
        assert ratios == list(bench.RATIOS)
    assert min(bench.RATIOS) == 0.001 and max(bench.RATIOS) == 10.0


def test_crossover_counts_are_consistent(result):
    for r in result["crossover"]:
        assert isinstance(r["dirty-pages"], int) and isinstance(r["n-used-mmu-pages"], int)
        assert r["dirty-pages"] == max(1, round(r["ratio"] * r["n-used-mmu-pages"]))
        assert r["walk-modeled-ns"] > 0 and r["rmap-modeled-ns"] > 0
    by_shape = {}
    for r in result["crossover"]:
        by_shape.setdefault(r["shape"], []).append(r)
    for shape, rows in by_shape.items():
        # the walk's cost follows n_used_mmu_pages, not the dirty pages; rmap's grows with them
        # (not strictly: in shadow a gfn costs one rmap step per spte that maps it)
        assert len({r["walk-modeled-ns"] for r in rows}) == 1, shape
        rmap = {r["ratio"]: r["rmap-modeled-ns"] for r in rows}
        assert rmap[0.001] < rmap[0.1] < rmap[1.0] < rmap[10.0], shape
    # shadow paging keeps more shadow pages than tdp for the same guest
    assert by_shape["shadow"][0]["n-used-mmu-pages"] > by_shape["tdp"][0]["n-used-mmu-pages"]


def test_heuristic_branch_is_rmap_exactly_below_n_used(result):
    for r in result["crossover"]:
        expected = "rmap" if r["dirty-pages"] < r["n-used-mmu-pages"] else "walk"
        assert r["heuristic-branch"] == expected, r


def test_format_table(result):
    text = bench.format_table(result)
    for word in (*FIGURES, "cheaper", "heuristic-picks-cheaper", "tdp", "shadow"):
        assert word in text
    rows = [line for line in text.splitlines() if line.startswith(("tdp ", "shadow "))]
    assert len(rows) == len(result["crossover"])
    for line, r in zip(rows, result["crossover"], strict=True):
        cheaper = "rmap" if r["rmap-modeled-ns"] < r["walk-modeled-ns"] else "walk"
        fields = line.split()
        assert fields[-3] == cheaper and fields[-2] == r["heuristic-branch"]
        assert fields[-1] == ("yes" if cheaper == r["heuristic-branch"] else "no")
