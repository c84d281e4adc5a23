"""What a person reads: the progress lines and the summary table say what the figures are."""

from __future__ import annotations

from migrate.report import RamStats, Report, RoundRecord
from migrate.summary import progress_line, summary_table
from vmmodel import HarvestResult


def _report(**fields) -> Report:
    rounds = [
        RoundRecord(pass_no=1, phase="precopy", expected_downtime_ms=400.0,
                    harvest=HarvestResult(branch="walk", nr_dirty_pages=300)),
        RoundRecord(pass_no=2, phase="stop-and-copy", expected_downtime_ms=62.8,
                    harvest=HarvestResult(branch="rmap", nr_dirty_pages=5)),
    ]
    return Report(status="completed", verified=True, downtime_ms=62.8, rounds=rounds,
                  ram=RamStats(dirty_sync_count=3), **fields)


def test_the_final_row_says_its_pages_were_sent_and_its_downtime_is_measured():
    precopy, stop = (progress_line(r) for r in _report().rounds)
    assert "sync      300 dirty" in precopy and "expected downtime" in precopy
    assert ", sync " not in stop and "expected" not in stop
    assert "final sync        5 dirty (sent in this round)" in stop and "downtime     62.8" in stop
    table = summary_table(_report())
    stop_row = next(line for line in table.splitlines() if "stop-and-copy" in line)
    assert "62.8*" in stop_row
    assert table.splitlines()[-1].startswith("* the stop-and-copy's actual downtime")


def test_a_forced_switchover_says_precopy_did_not_converge():
    from migrate.experiments.progress import outcome
    from migrate.experiments.results import PointResult

    forced, converged = _report(switchover="force"), _report(switchover="switchover")
    status = summary_table(forced).splitlines()[0]
    assert status == ("status           completed (precopy did not converge: switchover forced "
                      "after 1 sync (on-no-convergence = force))")
    assert summary_table(converged).splitlines()[0] == "status           completed"
    line = outcome(PointResult(name="p", status="completed", verified=True, report=forced))
    assert line.startswith("completed (precopy did not converge: switchover forced), verified")
    line = outcome(PointResult(name="p", status="completed", verified=True, report=converged))
    assert line.startswith("completed, verified")


def test_compression_and_throttle_say_what_they_mean():
    report = _report(cpu_throttle_percentage=40)
    report.ram.compression_ratio, report.ram.compressed_bytes = 2.02, 422 << 20
    table = summary_table(report)
    assert "lz4 2.02x smaller, the batches it shrank 422.0 MiB on the wire" in table
    assert "cpu-throttle-percentage 40 % (vCPUs ran 60 % of the time)" in table
    assert "throttled to 60" not in table and "MiB compressed" not in table
