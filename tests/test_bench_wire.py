"""`precopy bench wire --quick --json` at a tiny size: it runs, verifies, and has its keys.

The rates depend on the machine, so only the structure, the verification, what a quick
run declines to measure or judge, and the verdict logic on given figures are checked.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from migrate.bench import wire as bench
from tests.procs import precopy

RUNS = ("random", "zero", "mixed", "mixed-lz4", "random-2ch", "random-4ch", "generated",
        "generated-digests")
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
    assert {result[name]["store"] for name in RUNS} == {"image", "digests"}
    assert result["generated-digests"]["store"] == "digests"
    assert result["quick"] is True
    assert result["met"] == dict.fromkeys(bench.TARGETS)  # a quick run judges no target


def test_a_quick_run_does_not_print_cpu_quantized_to_clock_ticks(result):
    # 2 MiB per pass is a fraction of one 10 ms tick of the destination's CPU
    for name in RUNS:
        ticks = result[name]["destination-cpu-ticks"]
        assert ticks is None or ticks < bench.MIN_CPU_TICKS, name
        assert result[name]["cpu-ms-per-gib"]["destination"] is None, name
        assert result[name]["cpu-ms-per-gib"]["source"] > 0, name  # ns resolution
    table = bench.format_table(result)
    assert "?: not measured" in table and "not judged" in table
    assert "NOT met" not in table


def test_a_full_run_that_misses_a_target_says_so_and_exits_1(result):
    full = {**result, "quick": False}
    fast = {**full, "random": {**full["random"], "ratio-to-ceiling": 0.9},
            "zero": {**full["zero"], "pages-per-s": 2 * bench.TARGETS["zero-pages-per-s"]},
            "generated": {**full["generated"], "ratio-to-ceiling": 0.9}}
    fast["met"] = bench.judge(fast)
    assert fast["met"] == dict.fromkeys(bench.TARGETS, True)
    assert bench.exit_code(fast) == bench.EXIT_MET == 0
    slow = {**fast, "zero": {**fast["zero"], "pages-per-s": 1e3}}
    slow["met"] = bench.judge(slow)
    assert slow["met"] == {"random-ratio-to-ceiling": True, "zero-pages-per-s": False,
                           "generated-ratio-to-ceiling": True}
    assert bench.exit_code(slow) == bench.EXIT_MISSED == 1
    table = bench.format_table(slow)
    assert "zero >= 5 M pages/s: NOT met" in table and "exit 1" in table


def test_table(result):
    table = bench.format_table(result)
    assert "ceiling" in table and "targets" in table
    assert all(name in table for name in RUNS)


def test_contents():
    npages = 512
    generated = bench.generated_memory(npages)
    assert generated.kind == "generated" and generated.array is None  # no page bytes held
    held = generated.write_count != 0
    assert 0.7 < held.mean() < 0.8  # the default working set, three quarters
    pages = generated.pages
    assert not pages[~held].any() and pages[held].any(axis=1).all()
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


def test_a_size_the_machine_cannot_hold_is_a_usage_error_naming_the_flag():
    too_big = bench.available_memory() // bench.MEMORY_COPIES + bench.PAGE
    too_big -= too_big % bench.PAGE
    with pytest.raises(ValueError, match="available"):
        bench.parse_size(str(too_big))
    with pytest.raises(ValueError, match="available"):
        bench.check_memory(too_big)
    proc = precopy("bench", "wire", "--size", "1TiB", timeout=30)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("precopy: --size: 1TiB per pass needs")
    assert "Traceback" not in proc.stderr and proc.stdout == ""
