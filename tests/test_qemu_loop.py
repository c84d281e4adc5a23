"""The engine runs QEMU's migration_thread loop: when it syncs, what its windows allow,
the periodic sync of 9.2+, QEMU's own costs, and the query-migrate samples."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from migrate.config import ConfigError, load_scenario
from migrate.report import Report
from migrate.source.client import DestinationClient
from migrate.source.engine import Source
from tests.procs import SMALL

MIB = 1 << 20
# 16 MiB rewritten at random 40,000 times a second against 16 MiB/s: never converges.
HOPELESS = ["guest.workload.kind=uniform", "guest.workload.rate=40000",
            "guest.workload.working-set=16MiB", "migration.max-bandwidth=16MiB/s"]




async def _migrate(url: str, *sets: str) -> Report:
    scenario = load_scenario(SMALL, list(sets))
    async with DestinationClient(url, timeout_s=10) as client:
        report = await Source(scenario, client).run()
    assert report.verified or report.status == "cancelled", report.error
    return report


async def test_it_syncs_only_when_pending_falls_below_the_threshold(dest_url):
    report = await _migrate(dest_url, "migration.downtime-limit=30ms")
    precopy = [r for r in report.rounds if r.phase == "precopy"]
    assert len(precopy) >= 3
    # Each sync but the last left more pending than the threshold at the next sync...
    for record in precopy[1:-1]:
        assert record.dirty_pages * 4096 >= record.threshold_size
    # ...and the first round ran until (nearly) every page had gone: no sync mid-round.
    first = precopy[0]
    assert first.pages_sent > 0.99 * first.dirty_pages
    assert report.ram.dirty_sync_count == len(report.rounds)


async def test_every_window_holds_its_budget_but_one_page(dest_url):
    report = await _migrate(dest_url)
    budget = 64 * MIB / 10  # max-bandwidth 64 MiB/s in configs/tests/small.toml
    active = [s for s in report.samples if s.status == "active"]
    assert len(active) > 5
    t = np.array([s.t for s in active])
    sent = np.array([s.transferred for s in active])
    # Polls 100 ms apart see at most two windows' budgets (one poll can straddle them).
    assert np.all(np.diff(sent) <= 2 * (budget + 4096 + 9))
    assert np.all(np.diff(t) >= 0.099)  # one answer per 100 ms poll
    assert report.samples[0].status == "setup" and report.samples[-1].status == "completed"
    assert report.samples[-1].remaining == 0
    assert sent[-1] <= report.ram.transferred


async def test_9_2_syncs_every_5_s_under_auto_converge_when_none_came(dest_url, caplog):
    # 64 MiB at 2 MiB/s: one round takes ~30 s, but from the second round on QEMU 9.2+
    # syncs at least every 5 s under auto-converge; 7.2 waits for the round's end.
    sets = [*HOPELESS, "guest.workload.working-set=64MiB", "migration.max-bandwidth=2MiB/s",
            "migration.auto-converge=true", "migration.max-time=80s",
            "migration.on-no-convergence=cancel", "migration.max-iterations=1000"]
    old = await _migrate(dest_url, *sets, "migration.qemu-version=7.2")
    new = await _migrate(dest_url, *sets, "migration.qemu-version=9.2")
    gaps = np.diff([r.start_ms for r in new.rounds])
    assert len(new.rounds) > len(old.rounds)
    # The tick after the round's own sync sees a new count and lets it be; from then on
    # a sync every tick: at most 10 s, then 5 s (plus the loop's pass).
    assert gaps[1] <= 10_000 + 100 and gaps[2:].max() <= 5000 + 100
    assert len(old.rounds) == 2  # the setup's interval, then a second round still going
    assert old.total_time_ms - old.rounds[-1].start_ms > 10_000
    # Both cancelled at max-time in the middle of a pass: the destination drops the
    # stream quietly (it once logged a traceback from write_eof on the gone socket).
    assert old.status == new.status == "cancelled"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_qemu_costs_slow_the_setup_and_stall_the_syncs(dest_url, tmp_path):
    table = tmp_path / "host.toml"
    table.write_text("setup_ns = 4e8\nsync_ns = 2e8\npage_ns = 10000.0\n")
    free = await _migrate(dest_url, "migration.downtime-limit=30ms")
    dear = await _migrate(dest_url, "migration.downtime-limit=30ms",
                          f"migration.costs={table}")
    assert dear.setup_time_ms == pytest.approx(free.setup_time_ms + 400, abs=1)
    # 10 us a normal page caps the precopy rate at ~390 MiB/s: above 64 MiB/s. The first
    # window opened before the 400 ms setup, so the first loop pass closes it after one
    # budget and a second budget goes at once: the first round is one window (100 ms)
    # shorter, less the ~20 ms that first budget took at 10 us a page (the windows open
    # that much later), and 200 ms longer for the sync that ends it, as every sync
    # while the guest runs.
    assert dear.rounds[0].duration_ms == pytest.approx(
        free.rounds[0].duration_ms - 100 + 20 + 200, abs=10)
    assert dear.total_time_ms > free.total_time_ms + 200 * (len(dear.rounds) - 2)


def test_bad_loop_keys_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="qemu-version"):
        load_scenario(SMALL, ["migration.qemu-version=8.0"])
    with pytest.raises(ConfigError, match="migration.costs"):
        load_scenario(SMALL, ["migration.costs=nosuchhost"])
    bad = tmp_path / "bad.toml"
    bad.write_text("sync_ns = -1\n")
    with pytest.raises(ConfigError, match="sync_ns"):
        load_scenario(SMALL, [f"migration.costs={bad}"])
    bad.write_text("sink_ns = 1\n")
    with pytest.raises(ConfigError, match="not a QEMU cost"):
        load_scenario(SMALL, [f"migration.costs={bad}"])


async def test_a_host_whose_syncs_hold_the_vcpus_stops_the_guest_meanwhile(dest_url, tmp_path):
    """sync_holds_vcpus (TCG and the BQL): the guest writes nothing through QEMU's setup
    and its syncs' userspace part; otherwise it runs through them."""
    runs = {}
    for holds in (0, 1):
        table = tmp_path / f"host{holds}.toml"
        table.write_text(f"setup_ns = 4e8\nsync_ns = 2e8\nsync_holds_vcpus = {holds}\n")
        runs[holds] = await _migrate(dest_url, "migration.downtime-limit=30ms",
                                     f"migration.costs={table}")
    for holds, report in runs.items():
        # small.toml's guest is a cpu-paced 8,000 writes/s, stopped in the downtime; held, it
        # also loses QEMU's 400 ms of setup and 200 ms of each sync while it ran.
        syncs = report.ram.dirty_sync_count - 2  # less the setup's and the completion's
        running_s = (report.total_time_ms - report.downtime_ms) / 1e3
        if holds:
            running_s -= 0.4 + 0.2 * syncs
        assert report.guest.writes == pytest.approx(8000 * running_s, rel=0.03), holds


@pytest.mark.parametrize("value", ["0.5", "2", "-1", "true"])
def test_a_flag_in_a_qemu_cost_table_is_0_or_1(tmp_path, value):
    bad = tmp_path / "flag.toml"
    bad.write_text(f"sync_holds_vcpus = {value}\n")
    with pytest.raises(ConfigError, match="sync_holds_vcpus .* is not 0 or 1"):
        load_scenario(SMALL, [f"migration.costs={bad}"])
