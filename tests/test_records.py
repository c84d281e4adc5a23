"""Report records: typed, to a dict and back, every field included; old lines still read."""

from __future__ import annotations

import dataclasses
import json
import typing

import pytest

from migrate.experiments.results import PointResult, ResultsFolder
from migrate.record import from_dict, record_fields, to_dict
from migrate.report import Report
from tests.records import default_of, every_field_set


def _records(cls: type, seen: dict[str, type] | None = None) -> dict[str, type]:
    """`cls` and every record nested in it, found through the field types."""
    seen = {} if seen is None else seen
    seen[cls.__name__] = cls
    hints = typing.get_type_hints(cls)
    for f in record_fields(cls):
        for t in (hints[f.name], *typing.get_args(hints[f.name])):
            if dataclasses.is_dataclass(t) and t.__name__ not in seen:
                _records(t, seen)
    return seen


RECORDS = _records(PointResult)


def test_the_records_include_vmmodels_own():
    assert {"Report", "RoundRecord", "RamStats", "GuestTotals", "HarvestResult"} <= set(RECORDS)


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_round_trip_sets_every_field(name):
    cls = RECORDS[name]
    obj = every_field_set(cls)
    for f in record_fields(cls):
        default = default_of(f)
        assert default is dataclasses.MISSING or getattr(obj, f.name) != default, f.name
    data = json.loads(json.dumps(to_dict(obj)))
    assert from_dict(cls, data) == obj
    assert to_dict(from_dict(cls, data)) == data


def test_a_harvest_record_leaves_its_gfns_out_and_rounds_ns():
    import numpy as np

    from vmmodel import HarvestResult

    h = HarvestResult(gfns=np.arange(3), branch="walk", kernel_ns=1234.6, lock_hold_ns=9.4)
    data = to_dict(h)
    assert "gfns" not in data and "slots" not in data  # one slot: no per-slot records
    assert (data["modeled-ns"], data["lock-hold-ns"]) == (1235, 9)


def test_an_old_results_line_still_reads(tmp_path):
    """A line from before switchover, per-slot records and guest totals: defaults fill in."""
    old = {"name": "p", "status": "completed", "verified": True,
           "report": {"status": "completed", "verified": True, "downtime": 1.5,
                      "rounds": [{"round": 1, "phase": "precopy", "start": 0.0,
                                  "duration": 2.0, "harvest": None, "dropped-key": 1}],
                      "guest": {"writes": 10}}}
    (tmp_path / "results.jsonl").write_text(json.dumps(old) + "\n")
    result = ResultsFolder(tmp_path).read_results()["p"]
    assert isinstance(result.report, Report)
    assert result.report.downtime_ms == 1.5 and result.report.switchover == ""
    assert result.report.guest.writes == 10 and result.report.guest.write_faults == 0
    assert result.report.rounds[0].pass_no == 1 and result.report.rounds[0].harvest.branch == ""
