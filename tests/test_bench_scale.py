"""`precopy bench scale` on a tiny point: its shape, skips, failures, verdicts and the CLI.

The real points take minutes (`precopy bench scale --quick` runs 1 and 8 GiB); here one
64 MiB migration runs through the same code, end to end, and the rest is checked on
given figures.
"""

from __future__ import annotations

import json

import pytest

from migrate import cli
from migrate.bench import scale

GiB = 1 << 30
TINY = scale.Point("tiny", ("guest.memory=64MiB", "guest.workload.rate=1000"))
POINT_KEYS = {"name", "overrides", "memory-bytes", "rate", "backing", "store", "status",
              "verified", "error", "wall-time-s", "process-wall-s", "total-time-ms", "speedup",
              "wire-bound", "source-peak-rss-bytes", "destination-peak-rss-bytes",
              "transferred-bytes", "passes", "switchover"}


@pytest.fixture(scope="module")
def result():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(scale, "CEILING_BYTES", 8 << 20)
        return scale.run(points_to_run=[TINY])


def test_a_point_is_a_real_verified_migration_with_each_process_weighed(result):
    (point,) = result["points"]
    assert POINT_KEYS <= set(point)
    assert point["status"] == "completed" and point["verified"] is True
    assert point["store"] == "image" and point["backing"] == "stored"  # 64 MiB: small
    assert point["memory-bytes"] == 64 << 20 and point["passes"] >= 2
    assert point["transferred-bytes"] > 48 << 20  # the working set's bytes crossed
    assert point["speedup"] == pytest.approx(point["total-time-ms"] / 1e3 / point["wall-time-s"])
    assert point["process-wall-s"] >= point["wall-time-s"] > 0
    assert point["wire-bound"] > 0
    # Each its own: the destination holds the image, the source its stored pages and model;
    # neither reading is this process's (whose peak a child's ru_maxrss starts from).
    for key in ("source-peak-rss-bytes", "destination-peak-rss-bytes"):
        assert result["rss-floor-bytes"] <= point[key] < 1 * GiB, key
    assert point["destination-exit"] == 0 and point["source-exit"] == 0


def test_the_result_is_one_json_object_and_a_table(result):
    assert json.loads(json.dumps(result)) == result
    assert result["loopback-mb-per-s"] > 0 and result["quick"] is False
    assert result["scale-settings"] == list(scale.SCALE_SETTINGS)
    assert set(result["met"]) == set(scale.TARGETS)
    assert all(v is None for v in result["met"].values())  # none of the targets' points ran
    assert scale.exit_code(result) == 0
    table = scale.format_table(result)
    row = next(line for line in table.splitlines() if line.startswith("tiny "))
    assert "64MiB" in row and " yes " in row and "completed" in row
    assert "max-iterations 1, max-time 30min, on-no-convergence force" in table


def test_a_point_the_host_cannot_hold_is_skipped_and_a_failed_one_reported(monkeypatch, capsys):
    monkeypatch.setattr(scale, "available_memory_bytes", lambda: 256 << 20)
    monkeypatch.setattr(scale, "loopback_ceiling", lambda nbytes: 1000.0)
    bad = scale.Point("bad", ("guest.memory=7MiB",))
    result = scale.run(points_to_run=[scale.scale_point(8), bad])
    skipped, failed = result["points"]
    assert skipped["status"] == "skipped" and skipped["verified"] is None
    assert skipped["error"].startswith("guest.memory: 8GiB needs about ")
    assert "available" in skipped["error"] and "process-wall-s" not in skipped  # nothing ran
    assert failed["status"] == "failed" and "2MiB" in failed["error"]
    assert scale.exit_code(result) == 1  # the failure, not the skip
    table = scale.format_table(result)
    assert "8gib" in table and "skipped: guest.memory: 8GiB" in table
    assert "error: config: guest.memory: '7MiB'" in table
    progress = capsys.readouterr().err
    assert "bench scale: [1/2] 8gib: skipped" in progress and "[2/2] bad: failed" in progress
    assert scale.exit_code({**result, "points": [skipped]}) == 0


def _figures(name: str, *, speedup: float = 20.0, wall: float = 60.0, rss: int = GiB,
             memory: int = GiB, ok: bool = True) -> dict:
    return {"name": name, "status": "completed" if ok else "failed", "verified": ok,
            "speedup": speedup, "process-wall-s": wall, "memory-bytes": memory,
            "source-peak-rss-bytes": rss, "destination-peak-rss-bytes": rss // 4}


def test_a_full_run_judges_each_target_on_its_point():
    points = [_figures("default"), _figures("default-1gbit", speedup=9.9),
              _figures("1gib", rss=200 << 20), _figures("64gib", speedup=5.0, wall=181.0,
                                                        rss=1500 << 20, memory=64 * GiB)]
    result = {"quick": False, "points": points,
              "source-rss-per-gib-bytes": scale.source_rss_per_gib(points)}
    assert result["source-rss-per-gib-bytes"] == pytest.approx((1300 << 20) / 63)
    met = scale.judge(result)
    assert met == {"default-speedup": True, "default-1gbit-speedup": False,
                   "64gib-speedup": True, "64gib-wall-s": False, "64gib-peak-rss-bytes": True,
                   "256gib-peak-rss-bytes": None, "source-rss-per-gib-bytes": True}
    assert scale.exit_code({**result, "met": met}) == 1
    assert all(v is None for v in scale.judge({**result, "quick": True}).values())
    # a point that did not complete is not judged (its failure fails the run instead)
    failed = [*points[:3], _figures("64gib", ok=False)]
    assert scale.judge({**result, "points": failed})["64gib-speedup"] is None


def test_quick_runs_the_small_points_and_the_defaults():
    assert [p.name for p in scale.points(quick=True)] == ["1gib", "8gib", "default",
                                                          "default-1gbit"]
    assert [p.name for p in scale.points()] == ["1gib", "8gib", "64gib", "256gib", "default",
                                                "default-1gbit"]
    big = scale.scale_point(64)
    assert "guest.workload.rate=1600000" in big.overrides and big.settings == scale.SCALE_SETTINGS
    assert scale.points()[-2].all_overrides == ("link.bandwidth=10Gbit/s",)  # as shipped


def test_the_cli_prints_the_table_or_the_json_and_exits_as_judged(monkeypatch, capsys, result):
    calls = []
    monkeypatch.setattr(scale, "run", lambda quick=False: calls.append(quick) or result)
    assert cli.main(["bench", "scale", "--quick", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == result and calls == [True]
    assert cli.main(["bench", "scale"]) == 0
    assert capsys.readouterr().out.startswith("precopy bench scale: ")
    assert cli.main(["bench", "scale", "--size", "1GiB"]) == 2
    assert "--size: only for bench wire" in capsys.readouterr().err
