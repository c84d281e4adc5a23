"""`precopy bench mmu` at quick sizes: the keys, types and the crossover's shape.

The wall-clock figures are not checked against their targets (they depend on the machine):
only the structure, the verdict logic on given figures, and the deterministic parts (the
crossover's counts and branches).
"""

from __future__ import annotations

import json

import pytest

from migrate.bench import mmu as bench

FIGURES = ("writes-per-s", "walk-256m-ms", "rmap-ns-per-gfn")  # at quick sizes
RECORD_KEYS = {"shape", "ratio", "dirty-pages", "n-used-mmu-pages", "walk-modeled-ns",
               "rmap-modeled-ns", "heuristic-branch"}


@pytest.fixture(scope="module")
def result():
    return bench.run(quick=True)


def test_keys_and_types(result):
    assert set(FIGURES) | {"crossover", "targets", "met", "python", "numpy",
                           "cpu-count", "measured-on"} <= set(result)
    for key in FIGURES:
        assert isinstance(result[key], float) and result[key] > 0, key
    assert set(result["measured-on"]) == set(FIGURES)
    assert result["targets"] == {"writes-per-s": 20e6, "walk-16g-ms": 30.0,
                                 "rmap-ns-per-gfn": 300.0}
    assert isinstance(result["python"], str) and isinstance(result["numpy"], str)
    assert isinstance(result["cpu-count"], int) and result["cpu-count"] >= 1
    assert json.loads(json.dumps(result)) == result  # plain JSON, as `--json` prints it


def test_a_quick_run_names_its_walk_by_its_guest_and_judges_no_target(result):
    assert "walk-16g-ms" not in result  # a 256 MiB guest was walked, not a 16 GiB one
    assert bench.walk_key(bench.QUICK) == "walk-256m-ms"
    assert bench.walk_key(bench.FULL) == "walk-16g-ms"
    assert "256 MiB" in result["measured-on"]["walk-256m-ms"]
    assert result["quick"] is True
    assert result["met"] == dict.fromkeys(bench.TARGETS)
    assert bench.exit_code(result) == bench.EXIT_MET
    text = bench.format_table(result)
    assert "NO" not in text.split() and "not judged" in text


@pytest.mark.parametrize("slow", ["writes-per-s", "walk-16g-ms", "rmap-ns-per-gfn"])
def test_a_full_run_that_misses_a_target_says_which_and_exits_1(result, slow):
    good = {"writes-per-s": 2 * bench.TARGETS["writes-per-s"],
            "walk-16g-ms": bench.TARGETS["walk-16g-ms"] / 2,
            "rmap-ns-per-gfn": bench.TARGETS["rmap-ns-per-gfn"] / 2}
    assert bench.judge(good, quick=False) == dict.fromkeys(bench.TARGETS, True)
    assert bench.judge(good, quick=True) == dict.fromkeys(bench.TARGETS)
    figures = {**good, slow: good[slow] / 4 if slow == "writes-per-s" else good[slow] * 4}
    met = bench.judge(figures, quick=False)
    assert [key for key, v in met.items() if v is False] == [slow]
    full = {**{k: v for k, v in result.items() if k not in FIGURES}, **figures, "quick": False,
            "met": met, "measured-on": dict.fromkeys(figures, "?")}
    assert bench.exit_code(full) == bench.EXIT_MISSED == 1
    assert bench.exit_code({**full, "met": bench.judge(good, quick=False)}) == 0
    text = bench.format_table(full)
    assert f"targets missed: {slow} (exit 1)" in text
    assert [line.split()[-1] for line in text.splitlines() if line.startswith(slow)] == ["NO"]


def test_crossover_covers_both_shapes_and_every_ratio_once(result):
    records = result["crossover"]
    assert all(set(r) == RECORD_KEYS for r in records)
    for shape in ("tdp", "shadow"):
        rows = [r for r in records if r["shape"] == shape]
        n_used = rows[0]["n-used-mmu-pages"]
        counts = [r["dirty-pages"] for r in rows]
        # every asked ratio is measured, and a page count that several round to only once
        assert counts == sorted(set(counts))
        assert set(counts) == {max(1, round(x * n_used)) for x in bench.RATIOS}
        assert len(counts) < len(bench.RATIOS)  # the quick guest is small enough to collide
    assert min(bench.RATIOS) == 0.001 and max(bench.RATIOS) == 10.0


def test_dirty_counts_are_distinct_and_bounded():
    assert bench.dirty_counts(35, 16_384) == [1, 4, 10, 35, 105, 350]
    assert bench.dirty_counts(35, 100) == [1, 4, 10, 35, 100]
    assert bench.dirty_counts(10_000, 10**6) == [round(x * 10_000) for x in bench.RATIOS]


def test_crossover_counts_are_consistent(result):
    for r in result["crossover"]:
        assert isinstance(r["dirty-pages"], int) and isinstance(r["n-used-mmu-pages"], int)
        assert r["ratio"] == r["dirty-pages"] / r["n-used-mmu-pages"]  # as measured
        assert r["walk-modeled-ns"] > 0 and r["rmap-modeled-ns"] > 0
    by_shape = {}
    for r in result["crossover"]:
        by_shape.setdefault(r["shape"], []).append(r)
    for shape, rows in by_shape.items():
        # the walk's cost follows n_used_mmu_pages, not the dirty pages; rmap's grows with them
        # (not strictly: in shadow a gfn costs one rmap step per spte that maps it)
        assert len({r["walk-modeled-ns"] for r in rows}) == 1, shape
        rmap = {r["ratio"]: r["rmap-modeled-ns"] for r in rows}
        assert list(rmap.values()) == sorted(rmap.values()) and min(rmap) < 1 < max(rmap), shape
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
    percents = [line.split()[1] for line in text.splitlines()
                if line.startswith(("tdp ", "shadow "))]
    assert "1000%" in percents and not any("e" in p for p in percents)
    rows = [line for line in text.splitlines() if line.startswith(("tdp ", "shadow "))]
    assert len(rows) == len(result["crossover"])
    for line, r in zip(rows, result["crossover"], strict=True):
        cheaper = "rmap" if r["rmap-modeled-ns"] < r["walk-modeled-ns"] else "walk"
        fields = line.split()
        assert fields[-3] == cheaper and fields[-2] == r["heuristic-branch"]
        assert fields[-1] == ("yes" if cheaper == r["heuristic-branch"] else "no")


def test_the_command_exits_1_on_a_missed_target_and_0_on_a_quick_run(result, monkeypatch,
                                                                       capsys):
    from migrate import cli

    missed = {**result, "quick": False, "met": {**result["met"], "writes-per-s": False}}
    for given, code in ((result, 0), (missed, 1)):
        monkeypatch.setattr(bench, "run", lambda quick=False, given=given: given)
        assert cli.main(["bench", "mmu", "--json"]) == code
        assert json.loads(capsys.readouterr().out)["met"] == given["met"]
