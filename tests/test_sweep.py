"""`precopy sweep`: sweep files, point names, validation, and resumable runs with real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from migrate import cli
from migrate.config import ConfigError
from migrate.experiments.results import PointResult, ResultsFolder, first_difference
from migrate.experiments.sweep import (
    load_sweep,
    set_arg,
    sweep_from_dict,
    toml_value,
    value_label,
)
from migrate.report import Report
from tests.procs import ROOT, SMALL, precopy, terminate

# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("key,value,label", [
    ("mmu.strategy", "rmap", "rmap"),
    ("mmu.shape", "shadow", "shadow"),
    ("guest.workload.rate", 30000, "rate30000"),
    ("guest.workload.rate", 2.5e4, "rate25000"),
    ("guest.workload.hot-writes", 0.75, "hotw0.75"),
    ("link.bandwidth", "1Gbit/s", "bw1Gbit"),
    ("link.bandwidth+migration.max-bandwidth", "25Gbit/s", "bw25Gbit"),
    ("migration.max-bandwidth", "128MiB/s", "maxbw128MiB"),
    ("guest.memory", "256MiB", "mem256MiB"),
    ("guest.workload.working-set", "50%", "ws50pct"),
    ("migration.downtime-limit", "50ms", "dl50ms"),
    ("guest.vga", True, "vga"),
    ("guest.vga", False, "novga"),
    ("seed", 3, "seed3"),
    ("guest.workload.exponent", 1.1, "exponent1.1"),
    ("mmu.strategy", "rmap-noflush", "rmap-noflush"),
    ("mmu.strategy", "protect-before-take", "protect-before-take"),
])
def test_value_labels(key, value, label):
    assert value_label(key, value) == label


def test_a_points_name_before_names_kept_hyphens_is_known():
    sweep = sweep_from_dict({"grid": {"mmu": {"strategy": ["rmap-noflush"]}, "seed": [1]}})
    (point,) = sweep.points()
    assert point.name == "rmap-noflush-seed1"
    assert sweep.legacy_name(point) == "rmapnoflush-seed1"


def test_grid_points_are_the_product_named_from_their_values():
    sweep = sweep_from_dict({
        "set": {"guest.memory": "128MiB"},
        "grid": {"mmu.strategy": ["walk", "rmap"], "guest.workload.rate": [1000, 30000]},
    })
    points = sweep.points()
    assert [p.name for p in points] == ["walk-rate1000", "walk-rate30000", "rmap-rate1000",
                                        "rmap-rate30000"]
    assert points[3].params == {"mmu.strategy": "rmap", "guest.workload.rate": 30000}
    assert points[3].set_args == ["guest.memory=128MiB", "mmu.strategy=rmap",
                                  "guest.workload.rate=30000"]
    assert sweep.axes == ["mmu.strategy", "guest.workload.rate"]


def test_comparisons_cross_the_grid_and_come_first_in_names():
    sweep = sweep_from_dict({
        "comparisons": {"ram": {"guest.vga": False},
                        "ram-vga": {"guest.vga": True, "guest.workload.kind": "mix"}},
        "grid": {"mmu.strategy": ["walk", "heuristic"]},
    })
    points = sweep.points()
    assert [p.name for p in points] == ["ram-walk", "ram-heuristic", "ram-vga-walk",
                                        "ram-vga-heuristic"]
    assert points[2].params == {"comparison": "ram-vga", "mmu.strategy": "walk"}
    assert points[2].set_args == ["guest.vga=true", "guest.workload.kind=mix",
                                  "mmu.strategy=walk"]
    assert sweep.axes == ["comparison", "mmu.strategy"]


def test_linked_keys_move_together_and_nested_keys_flatten():
    sweep = sweep_from_dict(tomllib.loads("""
        [grid]
        mmu.shape = ["tdp"]
        "link.bandwidth+migration.max-bandwidth" = ["1Gbit/s", "10Gbit/s"]
    """))
    points = sweep.points()
    assert [p.name for p in points] == ["tdp-bw1Gbit", "tdp-bw10Gbit"]
    assert points[0].set_args == ["mmu.shape=tdp", "link.bandwidth=1Gbit/s",
                                  "migration.max-bandwidth=1Gbit/s"]
    scenario = sweep.validate()["tdp-bw10Gbit"]
    assert scenario.link.bandwidth_bps == scenario.migration.max_bandwidth_bps == 10e9 / 8


def test_no_axes_is_one_point():
    assert [p.name for p in sweep_from_dict({}).points()] == ["base"]


@pytest.mark.parametrize("value", [
    "rmap", "1Gbit/s", 'say "hi"\n', "ünïcode", 3, -2, 0.1, 1e-5, 1e300, True, False,
    [1, 2.5, "x"], {"kind": "vga", "fps": 30},
    [{"kind": "hotspot", "rate": 6000}, {"kind": "vga", "region": 0.5}],
    {"a key": {"nested": [True]}},
])
def test_toml_value_reads_back(value):
    assert tomllib.loads(f"v = {toml_value(value)}")["v"] == value


def test_set_arg_is_bare_only_when_it_reads_back_as_the_string():
    assert set_arg("mmu.strategy", "rmap") == "mmu.strategy=rmap"
    assert set_arg("k", "true") == 'k="true"'  # bare, it would be a boolean
    assert set_arg("k", "1e3") == 'k="1e3"'
    assert set_arg("guest.vga", True) == "guest.vga=true"


# --------------------------------------------------------------------------- validation


def _sweep_file(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_bad_value_names_the_point_and_the_key(tmp_path):
    path = _sweep_file(tmp_path, f"""
        base = "{SMALL}"
        [grid]
        "mmu.strategy" = ["walk", "nonsense"]
        "guest.workload.rate" = [1000, 2000]
    """)
    with pytest.raises(ConfigError) as err:
        load_sweep(path).validate()
    message = str(err.value)
    assert "point nonsense-rate1000" in message and "mmu.strategy" in message
    assert "(and 1 more points fail)" in message


@pytest.mark.parametrize("text,words", [
    ('[grid]\n"mmu.stratgy" = ["walk"]', ["point walk", "mmu.stratgy", "did you mean"]),
    ('[grid]\n"mmu.strategy" = "walk"', ["grid.mmu.strategy", "array"]),
    ('[grid]\n"mmu.strategy" = []', ["grid.mmu.strategy", "non-empty"]),
    ('[grids]\n"mmu.strategy" = ["walk"]', ["unknown key 'grids'"]),
    ('[grid]\n"seed" = [1, 1]', ["both named 'seed1'"]),
    ('[grid]\n"seed" = [1]\n"seed+mmu.shape" = ["tdp"]', ["'seed' is on more than one axis"]),
    ('base = "nowhere.toml"', ["base", "is not a file"]),
    ('[report]\nx = "guest.workload.rate"', ["report.x", "not a grid axis"]),
    ('[comparisons."a b"]\nseed = 2', ["comparisons.a b", "name"]),
    ("[grid\n", ["sweep", "s.toml"]),
])
def test_malformed_sweeps_are_refused(tmp_path, text, words):
    path = _sweep_file(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_sweep(path).validate()
    assert all(w in str(err.value) for w in words), str(err.value)


def test_base_is_relative_to_the_sweep_file(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "guest.toml").write_text('[guest]\nmemory = "32MiB"\n')
    (tmp_path / "sweeps").mkdir()
    path = _sweep_file(tmp_path / "sweeps", 'base = "../configs/guest.toml"\n[grid]\nseed = [4]')
    scenario = load_sweep(path).validate()["seed4"]
    assert scenario.guest.memory_pages * 4096 == 32 << 20 and scenario.seed == 4


def test_cli_refuses_a_bad_sweep_with_one_line_and_exit_2(tmp_path):
    path = _sweep_file(tmp_path, '[grid]\n"mmu.strategy" = ["walk", "bogus"]')
    proc = precopy("sweep", str(path), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert "point bogus" in proc.stderr and "mmu.strategy" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # refused before anything ran
    proc = precopy("sweep", str(tmp_path / "missing.toml"))
    assert proc.returncode == 2 and "cannot read" in proc.stderr


def test_dry_run_lists_points_and_their_commands(tmp_path):
    path = _sweep_file(tmp_path, f'base = "{SMALL}"\n[grid]\n"mmu.strategy" = ["walk", "rmap"]')
    proc = precopy("sweep", str(path), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "2 points (2 mmu.strategy); every scenario loads" in proc.stdout
    assert "rmap  precopy run" in proc.stdout and "--set mmu.strategy=rmap" in proc.stdout


def test_first_difference():
    assert first_difference({"a": {"b": [1, 2]}}, {"a": {"b": [1, 2]}}) is None
    assert first_difference({"a": {"b": [1, 2]}}, {"a": {"b": [1, 3]}}) == "a.b[1]"
    assert first_difference({"a": 1}, {"a": 1, "c": 2}) == "c"
    assert first_difference({"a": 1}, {"a": 1.0}) == "a"


# --------------------------------------------------------------------------- running


def _tiny(tmp_path: Path, extra: str = "") -> Path:
    base = os.path.relpath(SMALL, tmp_path)
    return _sweep_file(tmp_path, f"""
        description = "tiny"
        base = "{base}"
        {extra}
        [grid]
        "mmu.strategy" = ["walk", "rmap"]
        "guest.workload.rate" = [2000, 8000]
    """, "tiny.toml")


def _lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_sweep_runs_every_point_and_resumes_where_it_stopped(tmp_path):
    sweep, out = _tiny(tmp_path), tmp_path / "out"
    # Stopped after one point (--limit), as if interrupted: one whole line.
    proc = precopy("sweep", str(sweep), "--out", str(out), "--jobs", "2", "--limit", "1")
    assert proc.returncode == 0, proc.stderr
    first = _lines(out)
    assert len(first) == 1 and first[0]["name"] == "walk-rate2000"
    assert "3 points left" in proc.stdout
    # Started again: the done point is not rerun, the other three run two at a time.
    proc = precopy("sweep", str(sweep), "--out", str(out), "--jobs", "2")
    assert proc.returncode == 0, proc.stderr
    assert "1 already done" in proc.stdout and "running 3 with 2 jobs" in proc.stdout
    lines = _lines(out)
    assert lines[0] == first[0]  # untouched, same timestamps
    assert sorted(line["name"] for line in lines) == sorted(
        ["walk-rate2000", "walk-rate8000", "rmap-rate2000", "rmap-rate8000"])
    for line in lines:
        assert line["status"] == "completed" and line["verified"] is True
        assert line["report"]["verified"] is True and line["report"]["rounds"]
        assert line["command"].startswith("precopy run ")
        assert line["params"]["mmu.strategy"] == line["report"]["config"]["mmu"]["strategy"]
        assert line["params"]["guest.workload.rate"] == (
            line["report"]["config"]["guest"]["workload"]["rate"])
    # The two jobs overlapped in time.
    spans = sorted((line["started"], line["finished"]) for line in lines[1:])
    assert any(a[1] > b[0] for a, b in zip(spans, spans[1:], strict=False))
    stored = json.loads((out / "sweep.json").read_text())
    assert stored["axes"] == ["mmu.strategy", "guest.workload.rate"]
    assert len(stored["points"]) == 4
    assert not (out / "tmp").exists()
    # A third time: nothing to run.
    proc = precopy("sweep", str(sweep), "--out", str(out))
    assert proc.returncode == 0 and "nothing to run" in proc.stdout
    assert len(_lines(out)) == 4
    # The same names with a different scenario are refused, not mixed in.
    changed = _tiny(tmp_path, '[set]\n"guest.workload.kind" = "uniform"')
    proc = precopy("sweep", str(changed), "--out", str(out))
    assert proc.returncode == 2 and "different scenario" in proc.stderr
    assert "guest.workload.kind" in proc.stderr


def _running_for(out: Path) -> list[int]:
    """Processes whose command line names the results folder (the points' `run`s)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if str(out).encode() in cmdline and b"sweep" not in cmdline:
                pids.append(int(entry.name))
    return pids


def test_interrupted_sweep_keeps_whole_lines_and_resumes(tmp_path):
    sweep, out = _tiny(tmp_path), tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "migrate", "sweep", str(sweep), "--out", str(out), "--jobs", "1"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = out / "results.jsonl"
    deadline = time.monotonic() + 60
    while not (results.exists() and results.read_text().count("\n") >= 1):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    time.sleep(0.3)  # the second point is under way
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 1, stderr
    assert "interrupted" in stdout
    lines = _lines(out)
    done = {line["name"] for line in lines}
    assert 1 <= len(lines) < 4 and all(line["verified"] for line in lines)
    assert not _running_for(out)  # the running point's processes were stopped
    proc = precopy("sweep", str(sweep), "--out", str(out), "--jobs", "2")
    assert proc.returncode == 0, proc.stderr
    after = _lines(out)
    assert len(after) == 4 and after[: len(lines)] == lines
    assert done.isdisjoint(line["name"] for line in after[len(lines):])


def _stored(out: Path, *names: str) -> None:
    """results.jsonl holding lines for *names* (errors: no report, so no scenario to compare)."""
    folder = ResultsFolder(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        folder.append(PointResult(name=name, error="boom"))


def test_a_folder_with_another_sweeps_results_is_refused(tmp_path):
    out = tmp_path / "out"
    _stored(out, "walk-rate2000", "tdp-bw1Gbit")
    proc = precopy("sweep", str(_tiny(tmp_path)), "--out", str(out))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "another sweep" in proc.stderr and "tdp-bw1Gbit" in proc.stderr
    assert len(_lines(out)) == 2  # nothing ran


def test_a_point_stored_under_its_name_without_hyphens_is_not_run_as_new(tmp_path):
    sweep = _sweep_file(tmp_path, f"""
        base = "{os.path.relpath(SMALL, tmp_path)}"
        [grid]
        "mmu.strategy" = ["walk", "rmap-noflush"]
    """)
    out = tmp_path / "out"
    _stored(out, "walk", "rmapnoflush")
    proc = precopy("sweep", str(sweep), "--out", str(out))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "point rmap-noflush is stored there as rmapnoflush" in proc.stderr
    assert len(_lines(out)) == 2


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_a_point_timeout_that_is_not_a_positive_number_is_refused(capsys, tmp_path, value):
    assert cli.main(["sweep", str(_tiny(tmp_path)), "--out", str(tmp_path / "out"),
                     f"--point-timeout={value}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--point-timeout" in err[0] and value in err[0]
    assert not (tmp_path / "out").exists()


def test_a_point_stopped_at_its_timeout_is_logged_and_leaves_nothing_in_tmp(tmp_path):
    # A wall-clock migration held to 1 MiB/s needs a minute for its first pass: it cannot
    # finish within the timeout, however fast the machine.
    sweep = _sweep_file(tmp_path, f"""
        base = "{os.path.relpath(SMALL, tmp_path)}"
        [set]
        clock = "wall"
        "migration.max-bandwidth" = "1MiB/s"
        [grid]
        seed = [1]
    """)
    out = tmp_path / "out"
    proc = precopy("sweep", str(sweep), "--out", str(out), "--point-timeout", "3")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (line,) = _lines(out)
    assert line["status"] == "error" and "no result after 3 s" in line["error"]
    assert f"see {out / 'logs'}" in proc.stdout
    log = (out / "logs" / "seed1.log").read_text()
    assert log.startswith("$ precopy run ") and "no result after 3 s" in log
    assert not (out / "tmp").exists()


def test_a_reader_that_leaves_does_not_stop_the_sweep(tmp_path):
    # `precopy sweep ... | head -1`: the points still run and the exit follows them.
    sweep = _sweep_file(tmp_path, f"""
        base = "{os.path.relpath(SMALL, tmp_path)}"
        [grid]
        seed = [1]
    """)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "migrate", "sweep", str(sweep), "--out",
                             str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    try:
        stderr = proc.stderr.read()
        code = proc.wait(timeout=120)
    finally:
        terminate(proc)
        proc.stderr.close()
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    (line,) = _lines(out)
    assert line["verified"] is True and code == 0, stderr


def test_a_second_sweep_cannot_write_the_same_folder(tmp_path):
    out = tmp_path / "out"
    holder = ResultsFolder(out)
    holder.open_for_sweep()
    try:
        proc = precopy("sweep", str(_tiny(tmp_path)), "--out", str(out))
    finally:
        holder.close()
    assert proc.returncode == 2 and "another sweep" in proc.stderr


# --------------------------------------------------------------------------- records and analysis


def test_experiment_objects_round_trip(tmp_path):
    from migrate.experiments.results import PointResult
    from migrate.experiments.sweep import Axis, Point, Sweep

    sweep = load_sweep(_sweep_file(tmp_path, f"""
        base = "{SMALL}"
        [set]
        "guest.workload" = {{ kind = "mix", parts = [{{ kind = "uniform", rate = 10 }}] }}
        [comparisons.a]
        seed = 2
        [grid]
        "link.bandwidth+migration.max-bandwidth" = ["1Gbit/s"]
        [report]
        x = "link.bandwidth+migration.max-bandwidth"
    """))
    assert Sweep.from_dict(json.loads(json.dumps(sweep.to_dict()))) == sweep
    for point in sweep.points():
        assert Point.from_dict(json.loads(json.dumps(point.to_dict()))) == point
    axis = sweep.grid[0]
    assert Axis.from_dict(axis.to_dict()) == axis
    result = PointResult(name="a-bw1Gbit", params={"comparison": "a"}, status="completed",
                         verified=True, exit_code=0, wall_time_s=1.5, code="abc",
                         report=Report(status="completed"))
    assert PointResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result


def _fake(name: str, strategy: str, harvests: list[tuple[str, int, float]],
          rate: int = 1000, expected_ms: float = 100.0):
    """A PointResult whose report has one precopy pass per (branch, nr_dirty, modeled_ns)."""
    from migrate.experiments.results import PointResult

    rounds = [{"round": i + 1, "phase": "precopy", "start": 0.0, "duration": 10.0,
               "expected-downtime": expected_ms,
               "harvest": {"strategy": strategy, "branch": branch, "nr-dirty-pages": n,
                           "n-used-mmu-pages": 100, "modeled-ns": ns, "lock-hold-ns": ns}}
              for i, (branch, n, ns) in enumerate(harvests)]
    config = {"mmu": {"strategy": strategy, "shape": "tdp"},
              "migration": {"downtime-limit": "300ms"}}
    report = {"status": "completed", "verified": True, "downtime": 1.0, "total-time": 2.0,
              "config": config, "rounds": rounds, "ram": {}, "guest": {}}
    return PointResult(name=name, params={"mmu.strategy": strategy, "guest.workload.rate": rate},
                       status="completed", verified=True, report=Report.from_dict(report))


def test_crossover_fit_and_the_heuristics_dearer_choices():
    from migrate.experiments.analysis import convergence_limits, crossovers

    rmap = lambda n: 5000 + 50 * n  # noqa: E731
    results = [
        _fake("walk", "walk", [("walk", n, 100_000) for n in (10, 1000, 50_000)]),
        _fake("rmap", "rmap", [("rmap", n, rmap(n)) for n in (10, 1000, 50_000)]),
        # ratio 0.5: rmap, right; 5: walk, dearer (rmap is cheaper up to 19); 50: walk, right
        _fake("heur", "heuristic", [("rmap", 50, rmap(50)), ("walk", 500, 100_000),
                                    ("walk", 5000, 100_000)]),
    ]
    (fit,) = crossovers(results)
    assert fit.rmap_per_page_ns == pytest.approx(50) and fit.rmap_fixed_ns == pytest.approx(5000)
    assert fit.ratio == pytest.approx(19.0)
    assert (fit.heuristic_harvests, fit.heuristic_dearer) == (3, 1)
    assert fit.dearer_extra_ns == pytest.approx(100_000 - rmap(500))
    assert "rmap is cheaper below nr_dirty/n_used = 19" in fit.describe()
    slow = [_fake(f"r{r}", "walk", [("walk", 1, 1.0)], rate=r, expected_ms=e)
            for r, e in ((1000, 100.0), (2000, 250.0), (4000, 400.0))]
    lines = convergence_limits(slow, "guest.workload.rate", ["mmu.strategy",
                                                             "guest.workload.rate"])
    assert lines == ["walk: converged at rate 1000 to 2000; did not converge at rate 4000"]


def test_progress_lines_without_a_terminal():
    import io

    from migrate.experiments.progress import Progress, format_duration
    from migrate.experiments.results import PointResult

    assert format_duration(59.4) == "0:59" and format_duration(3725) == "1:02:05"
    out = io.StringIO()
    progress = Progress(3, 1, stream=out, tty=False)
    progress.start("a")
    progress.finish(PointResult(name="a", status="completed", verified=True, wall_time_s=2.0,
                                report=Report(downtime_ms=12.5, total_time_ms=2000.0)))
    progress.finish(PointResult(name="b", error="boom"))
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[2/3] a: completed, verified, downtime 12.5 ms")
    assert lines[1].startswith("[3/3] b: ERROR (boom)") and "ETA 0:00" in lines[1]


def test_a_sweep_file_is_read_as_a_config_is(tmp_path):
    """A BOM is skipped and another encoding is named, as for a scenario file."""
    bom = tmp_path / "bom.toml"
    bom.write_bytes(b'\xef\xbb\xbf[grid]\n"mmu.strategy" = ["walk"]\n')
    assert load_sweep(bom).grid[0].values == ("walk",)
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'description = "caf\xe9"\n')
    proc = precopy("sweep", str(latin), "--dry-run")
    assert proc.returncode == 2 and "not UTF-8" in proc.stderr and str(latin) in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
