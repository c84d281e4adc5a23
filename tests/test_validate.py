"""`precopy validate`: the recorded runs, the cost table measured from them, and the runs
themselves against real destinations on 127.0.0.1 (two short ones, ~2 s of virtual time)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from migrate import cli
from migrate.config.costs import qemu_costs_from_toml
from migrate.validate import measure
from migrate.validate.command import parse_tolerance
from migrate.validate.compare import Comparison, Figure
from migrate.validate.records import RecordError, read_records
from migrate.validate.scenario import configure, paced_share, unthrottled_rate
from vmmodel import PAGE_SIZE

RUNS = measure.REFERENCE_RUNS
SHORT = ("r0-bw400", "r5000-bw400")  # ~2 s of virtual time each


@pytest.fixture(scope="module")
def records():
    return read_records([RUNS])


@pytest.fixture(scope="module")
def lines():
    """The shipped file's lines by run name."""
    out = {}
    for line in RUNS.read_text().splitlines():
        run_id = json.loads(line)["run_id"]
        out[run_id.split("-", 2)[2]] = line
    return out


def _write(tmp_path: Path, *texts: str, name: str = "runs.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(texts) + "\n")
    return path


def _doctored(line: str, edit) -> str:
    data = json.loads(line)
    edit(data)
    return json.dumps(data)


# ------------------------------------------------------------------------ records


def test_the_shipped_runs_read_as_nine_typed_records(records):
    assert [r.name for r in records] == [
        "r0-bw100", "r5000-bw100", "r20000-bw100", "r60000-bw100", "r0-bw400",
        "r5000-bw400", "r20000-bw400", "r60000-bw400", "r60000-bw100.0-ac"]
    r = {r.name: r for r in records}
    busy = r["r20000-bw100"]
    assert busy.qemu_version == "7.2" and busy.completed and not busy.auto_converge
    assert busy.ram_total_bytes == 1_074_266_112  # RAM 1 GiB less 8 KiB, and the ROMs
    assert busy.result.dirty_sync_count == 15 == len(busy.passes())
    assert busy.setup_ms == 399 and busy.end_ms == 15_020
    assert busy.parameters.max_bandwidth_bytes_s == 100 * (1 << 20)
    assert len(busy.progress["remaining"]) == len(busy.progress) == len(busy.progress.status)
    cancelled = r["r60000-bw100"]
    assert cancelled.result.status == "cancelled" and cancelled.end_ms == 60_001
    assert cancelled.setup_ms == pytest.approx(417)  # from the MIGRATION event to active
    assert cancelled.transferred_bytes > 6e9  # the last poll's
    assert r["r60000-bw100.0-ac"].auto_converge


def test_a_record_with_more_fields_reads_the_same(tmp_path, lines):
    line = _doctored(lines["r0-bw400"], lambda d: d.update(extra={"new": 1}) or
                     d["config"].update(maxlag_ms=50))
    (record,) = read_records([_write(tmp_path, line)])
    assert record.name == "r0-bw400" and record.config.maxlag_ms == 50


@pytest.mark.parametrize("text, message", [
    ("{not json", "runs.jsonl:1: not JSON"),
    ("[1, 2]", "runs.jsonl:1: an array, expected an object"),
    ("", "no run records"),
])
def test_a_file_that_is_not_records_is_refused_in_one_line(tmp_path, text, message):
    with pytest.raises(RecordError, match=message):
        read_records([_write(tmp_path, text)])


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("progress"), r"runs.jsonl:2.progress: missing"),
    (lambda d: d["config"].update(smp="one"), r"config.smp: 'one' \(str\), expected a finite"),
    (lambda d: d["result"].update(total_time_ms=None), r"result.total_time_ms: missing for a"),
    (lambda d: d["progress"]["rows"][3].pop(), r"progress.rows\[3\]: an array, expected 14"),
    (lambda d: d["migration_parameters"].update({"max-bandwidth": True}),
     r"max-bandwidth: true \(a boolean\)"),
    (lambda d: d["versions"].update(qemu="unknown"), r"versions.qemu: no version"),
])
def test_a_record_missing_a_field_or_of_the_wrong_type_names_it(tmp_path, lines, edit, message):
    path = _write(tmp_path, lines["r0-bw400"], _doctored(lines["r5000-bw400"], edit))
    with pytest.raises(RecordError, match=message):
        read_records([path])


def test_bad_records_exit_2_with_one_line_and_no_traceback(tmp_path, capsys):
    assert cli.main(["validate", str(_write(tmp_path, '{"run_id": 3}'))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("precopy: validate: runs.jsonl:1.run_id: 3 (int), expected a string")
    assert "\n" not in err and "Traceback" not in err
    assert cli.main(["validate", str(tmp_path / "missing.jsonl")]) == 2
    assert "No such file" in capsys.readouterr().err


# ------------------------------------------------------------------------ the costs


def test_the_cost_table_says_what_the_shipped_traces_measure(records):
    """Measured again from the traces, each constant equals the table's within its step:
    the table cannot drift from its evidence."""
    table = qemu_costs_from_toml("qemu-7.2-tcg")
    written = tomllib.loads(measure.REFERENCE_COSTS.read_text())
    measured = measure.measure_costs(records)
    assert set(measured) == set(written)
    for name, m in measured.items():
        assert abs(getattr(table, name) - m.value_ns) <= m.step_ns / 2 + 1e-6, name
        assert written[name] == pytest.approx(m.rounded_ns), name
        assert m.samples >= 3 or name == "sync_ns", name
    # and the file is what the generator writes today (its comments included)
    assert measure.REFERENCE_COSTS.read_text() == measure.costs_toml(
        measured, title=measure.REFERENCE_TITLE,
        source="configs/reference/qemu-7.2-tcg/runs.jsonl", notes=measure.REFERENCE_NOTES)


def test_the_measured_costs_are_what_the_traces_show_by_eye(records):
    c = measure.measure_costs(records)
    assert 390e6 <= c["setup_ns"].value_ns <= 420e6  # setup ~400 ms
    assert 9e3 <= c["page_ns"].value_ns <= 12e3  # ~37 MB per 100 ms at 400 MiB/s: not the cap
    assert c["zero_page_ns"].value_ns < c["page_ns"].value_ns / 10
    assert c["stopped_page_ns"].value_ns < c["page_ns"].value_ns / 5  # 122 MB in 48 ms
    # A sync with ~107k pages found stalls sending for ~230 ms; it grows with the pages.
    assert 200 <= (c["sync_gib_ns"].value_ns + 107_000 * c["sync_page_ns"].value_ns) / 1e6 <= 260
    assert c["sync_page_ns"].value_ns > 1e3


def test_the_sync_stalls_are_rebuilt_inside_their_gaps(records):
    """Each stall starts at a rebuilt window start after the last poll before it, and ends
    at its MIGRATION_PASS: within the gap the polls show, never longer."""
    page_ns = measure.measure_costs(records)["page_ns"].rounded_ns
    for r in records:
        for s in measure.sync_samples(r, page_ns):
            p = r.progress
            before = p.t[(p.t < s.end_s - 1e-3) & (p["dirty-sync-count"] < s.pass_no)]
            assert 0 < s.stall_ms <= (s.end_s - before[-1]) * 1e3 + 2.0 + 1e-9


def test_the_other_data_is_the_readmes_82_mib(records):
    assert measure.other_nonzero_pages(records) * PAGE_SIZE / (1 << 20) == pytest.approx(
        82.6, abs=0.6)


# ------------------------------------------------------------------------ the scenarios


def test_a_run_is_configured_like_it(records):
    r = {r.name: r for r in records}["r20000-bw100"]
    c = configure(r, measure.other_nonzero_pages(records))
    s = c.scenario
    assert (s.guest.memory_pages + s.guest.vga_pages) * PAGE_SIZE == r.ram_total_bytes
    assert s.guest.vcpus == 1 and s.mmu.shape == "tdp" and s.clock == "virtual"
    dirtier, others = s.guest.workload.parts
    assert dirtier.kind == "uniform" and dirtier.pacing == "paced"
    assert dirtier.max_lag_ns == 100_000_000
    # the program's own rate; the shortfall during the migration is the model's to make
    assert dirtier.rate == pytest.approx(r.guest_src.rate_before_mean)
    assert dirtier.working_set_pages * PAGE_SIZE == 512 << 20
    assert others.kind == "idle" and others.prefill
    assert (others.working_set_pages - dirtier.working_set_pages) * PAGE_SIZE / (1 << 20) \
        == pytest.approx(82.6, abs=0.6)
    m = s.migration
    assert m.qemu_version == "7.2" and m.max_bandwidth_bps == 100 * (1 << 20)
    assert m.downtime_limit_ns == 300_000_000 and not m.auto_converge
    assert m.max_time_ns == 60_000_000_000 and m.on_no_convergence == "cancel"
    assert s.qemu_costs.name == "qemu-7.2-tcg" and s.qemu_costs.sync_page_ns > 0


def test_every_run_gets_the_rate_its_program_ran_at_before(records):
    """The mean during the migration includes the BQL stalls (and, with auto-converge, the
    time at 99 %, when a paced guest writes 11 % of its rate): the model makes both, so
    every run gets the rate before the migration."""
    r = {r.name: r for r in records}["r60000-bw100.0-ac"]
    share = paced_share(r)
    assert 0.9 < share < 0.97  # throttled at 99 % for the last ~6 s of 86
    rate, _ = unthrottled_rate(r)
    assert rate == pytest.approx(r.guest_src.rate_before_mean)
    assert rate > r.guest_src.rate_during_mean
    s = configure(r, 21_000).scenario.migration
    assert s.auto_converge and s.cpu_throttle_max == 99 and s.max_time_ns == 180e9
    plain = {r.name: r for r in records}["r60000-bw100"]
    assert paced_share(plain) == 1.0 and unthrottled_rate(plain)[0] == \
        plain.guest_src.rate_before_mean


# ------------------------------------------------------------------------ comparing


@pytest.mark.parametrize("text, value", [("10%", 0.1), ("0.25", 0.25), (" 5 % ", 0.05),
                                         ("0%", 0.0)])
def test_the_tolerance_reads_a_share(text, value):
    assert parse_tolerance(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["ten", "-1%", "nan", "inf%", "2000%"])
def test_a_bad_tolerance_is_a_usage_error(capsys, text):
    assert cli.main(["validate", f"--tolerance={text}"]) == 2
    assert "--tolerance" in capsys.readouterr().err


def _comparison(**kw) -> Comparison:
    base = dict(run="x", source="f:1", verdict=("completed", "completed"),
                time_ms=Figure(1000, 1050), transferred=Figure(100, 95), syncs=Figure(5, 7),
                downtime_ms=Figure(20, 5), max_throttle=Figure(0, 0), rate=1.0, wall_s=0.1)
    return Comparison(**{**base, **kw})


def test_a_run_agrees_within_the_tolerance_and_two_syncs():
    assert _comparison().misses(0.1) == []
    assert _comparison().misses(0.04) == ["time", "transferred"]
    assert _comparison(syncs=Figure(5, 8)).misses(0.1) == ["syncs"]
    assert _comparison(verdict=("cancelled", "completed")).misses(0.1) == ["verdict"]
    assert _comparison(downtime_ms=Figure(20, 100)).misses(0.1) == []  # shown, not judged


def test_validate_runs_two_short_runs_against_real_destinations(tmp_path, lines, capsys):
    path = _write(tmp_path, *(lines[name] for name in SHORT))
    plots = tmp_path / "plots"
    assert cli.main(["validate", str(path), "--plot", str(plots)]) == 0
    out, err = capsys.readouterr()
    table = out.splitlines()
    assert "time less setup, s" in table[0] and table[1].split()[:3] == ["run", "verdict", "QEMU"]
    rows = {line.split()[0]: line.split() for line in reversed(table) if line.split()[:1]
            and line.split()[0] in (*SHORT, "worst") and "each:" not in line}
    assert set(rows) == {*SHORT, "worst"}
    for name in SHORT:
        assert rows[name][1] == "completed" and rows[name][-1] == "yes"
        assert rows[name][8] == rows[name][9] == "3"  # dirty-sync-count, QEMU and precopy
    assert rows["worst"][1:3] == ["all", "equal"] and rows["worst"][-3:] == ["2", "of", "2"]
    assert "worst of each: time r" in out
    assert "[1/2] r0-bw400: QEMU completed" in err and "[2/2] r5000-bw400: precopy" in err
    pytest.importorskip("matplotlib")
    assert sorted(p.name for p in plots.iterdir()) == [f"remaining-{n}.png" for n in SHORT]


def test_a_doctored_measurement_outside_the_tolerance_exits_1(tmp_path, lines, capsys):
    def slower(d):  # QEMU took half as long again
        d["result"]["total_time_ms"] = d["result"]["setup_time_ms"] + 1.5 * (
            d["result"]["total_time_ms"] - d["result"]["setup_time_ms"])

    path = _write(tmp_path, _doctored(lines["r5000-bw400"], slower))
    assert cli.main(["validate", str(path), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    (run,) = doc["runs"]
    assert run["misses"] == ["time"] and not doc["ok"] and doc["worst"]["time"] == "r5000-bw400"
    assert run["time-less-setup-ms"]["error"] == pytest.approx(-1 / 3, abs=0.05)
    assert run["scenario"]["migration"]["qemu-version"] == "7.2"  # how it was configured
    # The same run judged within a tolerance wide enough for the doctored time agrees.
    assert cli.main(["validate", str(path), "--json", "--tolerance", "50%"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"]


def test_a_plot_folder_that_cannot_be_made_is_refused_before_any_run(tmp_path, lines, capsys):
    path = _write(tmp_path, *(lines[name] for name in SHORT))
    blocker = tmp_path / "file"
    blocker.write_text("")
    # /proc refuses a new folder even to root: the parent is there, the mkdir fails
    for folder in (blocker, blocker / "plots", tmp_path / "missing" / "plots",
                   Path("/proc/precopy-plots")):
        assert cli.main(["validate", str(path), "--plot", str(folder)]) == 2
        out, err = capsys.readouterr()
        assert out == "" and "--plot" in err and "Traceback" not in err  # no run began
