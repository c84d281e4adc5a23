"""Faults of the migration pair, with real processes on 127.0.0.1.

The destination is killed or stopped before hello, during a pass, during
stop-and-copy; the source is killed, stopped, interrupted, or comes second.
QEMU's promise is the bar: until the destination has resumed, the guest runs
on at the source with its memory intact, and the destination keeps nothing.

To strike at a precise moment the source runs in-process (the real `Source`,
client and page channels, with `peers.Faults` calling a hook before each
message) against a `precopy dest` process; the CLI cases run both sides as
processes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable

import numpy as np
import pytest

from migrate.digest import page_digests
from migrate.report import Report
from migrate.source.client import DestinationClient, DestinationError
from migrate.source.engine import Source
from tests.peers import (
    Faults,
    LineReader,
    LoggedDestination,
    children,
    guest_truth,
    is_alive,
    small,
    start_precopy,
    wait_until,
)
from tests.procs import SMALL, Destination, load_json, precopy

TIMEOUT_S = 1.0  # the source's --timeout in these tests
RUN_BOUND_S = 30  # an in-process migration that hangs fails the test instead
# A wall-clock migration that takes seconds, so a signal lands mid-stream: pass 1 alone
# is 48 MiB at 16 MiB/s.
SLOW = ("--set", "clock=wall", "--set", "migration.max-bandwidth=16MiB/s")
# In-process runs: two precopy passes (16,384 then ~1,200 pages), then stop-and-copy.
TWO_PASSES = ("migration.downtime-limit=30ms",)


async def migrate_with_fault(monkeypatch, url: str, strike: Callable[[], None], event: str, *,
                             pass_no: int | None = None, index: int = 0,
                             paused: bool | None = None) -> tuple[Source, Report, float, dict]:
    """Migrate in-process; call `strike()` once, before the first message that matches.

    Return the source, its report, the wall time of `run()`, and what was seen at the
    strike: the guest's page digests and whether it was paused.
    """
    seen: dict = {}
    async with DestinationClient(url, timeout_s=TIMEOUT_S) as client:
        source = Source(small(*TWO_PASSES), client)

        def hook(ev: str, p: int, i: int) -> None:
            if seen or ev != event or i != index or (pass_no is not None and p != pass_no):
                return
            if paused is not None and source.vm.paused != paused:
                return
            seen.update(digests=page_digests(source.vm.pages), paused=source.vm.paused)
            strike()

        Faults(monkeypatch, hook)
        started = time.monotonic()
        report = await asyncio.wait_for(source.run(), RUN_BOUND_S)
        elapsed = time.monotonic() - started
    assert seen, f"the fault point {event} {pass_no} {index} was never reached"
    return source, report, elapsed, seen


def assert_guest_intact(source: Source, report: Report, seen: dict) -> None:
    """Failed, with a cause; the guest runs at the source, its memory what it wrote."""
    assert report.status == "failed" and report.error
    assert report.verified is False
    assert report.guest.running is True and not source.vm.paused
    # The source never writes guest memory: it holds exactly what the guest wrote.
    assert np.array_equal(source.vm.pages, guest_truth(source))
    if seen["paused"]:  # struck in stop-and-copy: nothing ran since the pause
        assert np.array_equal(page_digests(source.vm.pages), seen["digests"])
    writes = source.vm.stats.writes
    source.vm.advance(20e6)  # and it carries on running
    assert source.vm.stats.writes > writes


async def assert_accepts_next(dest: LoggedDestination) -> None:
    async with DestinationClient(dest.url, timeout_s=10) as client:
        report = await asyncio.wait_for(Source(small(), client).run(), RUN_BOUND_S)
    assert report.ok, report.error


# ---------------------------------------------------------------- the destination dies

def test_dest_gone_before_hello(tmp_path):
    dest = Destination()
    url = dest.url
    dest.stop()
    out = tmp_path / "r.json"
    proc = precopy("source", str(SMALL), "--dest", url, "--quiet", "--json", str(out),
                   "--timeout", str(TIMEOUT_S))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    report = load_json(out)
    assert report["status"] == "failed" and "POST /migrations" in report["error"]
    assert report["guest"]["running"] is True and report["rounds"] == []


@pytest.mark.parametrize("event,pass_no,index,paused", [
    ("frame", 1, 3, False),        # the first pass: every page
    ("frame", 2, 1, False),        # a later pass
    ("frame", None, 1, True),      # stop-and-copy: the guest is paused
    ("complete", None, 0, True),   # all sent, COMPLETE next
], ids=["pass-1", "pass-2", "stop-and-copy", "complete"])
async def test_dest_killed(monkeypatch, event, pass_no, index, paused):
    with LoggedDestination() as dest:
        source, report, elapsed, seen = await migrate_with_fault(
            monkeypatch, dest.url, dest.kill, event, pass_no=pass_no, index=index, paused=paused)
    assert_guest_intact(source, report, seen)
    assert seen["paused"] is paused
    assert elapsed < TIMEOUT_S + 3  # a dead peer is noticed at once, not after a timeout
    if event == "frame" and not paused:
        assert f"/pass/{pass_no}" in report.error
        assert len([r for r in report.rounds if r.phase == "precopy"]) == pass_no - 1


@pytest.mark.parametrize("event,pass_no,index,paused", [
    ("hello", None, 0, None),
    ("frame", 1, 3, False),
    ("frame", None, 1, True),
    ("complete", None, 0, True),
], ids=["hello", "pass", "stop-and-copy", "complete"])
async def test_dest_stalls(monkeypatch, event, pass_no, index, paused):
    """SIGSTOP: the destination keeps its sockets but reads nothing and answers nothing."""
    with LoggedDestination("--idle-timeout", "1") as dest:
        source, report, elapsed, seen = await migrate_with_fault(
            monkeypatch, dest.url, lambda: dest.signal(signal.SIGSTOP), event, pass_no=pass_no,
            index=index, paused=paused)
        # Noticed after the timeout, not before; then the DELETE waits at most as long.
        assert TIMEOUT_S <= elapsed < 2 * TIMEOUT_S + 3, elapsed
        assert f"for {TIMEOUT_S:g} s" in report.error
        if event == "frame" and not paused:
            assert "took no data" in report.error  # a stalled writer, not a slow answer
        assert_guest_intact(source, report, seen)
        # Woken up, the destination must not resume a guest the source kept running.
        dest.signal(signal.SIGCONT)
        status = dest.wait_idle(timeout=5)
        assert status["completed"] == 0
        await assert_accepts_next(dest)
        assert dest.status()["completed"] == 1


@pytest.mark.parametrize("peer", ["reads-nothing", "answers-nothing"])
async def test_a_request_to_a_stuck_peer_is_bounded(peer):
    """The client under every control request (hello, COMPLETE, DELETE): a peer that stops
    reading holds a large body's write, one that reads all and never answers holds the
    reply; each is given up after the timeout. COMPLETE for a 16 GiB guest is 32 MiB."""

    async def stuck(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if peer == "answers-nothing":
            while await reader.read(1 << 20):
                pass
        await asyncio.sleep(30)

    server = await asyncio.start_server(stuck, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with DestinationClient(f"http://127.0.0.1:{port}", timeout_s=0.5) as client:
            started = time.monotonic()
            with pytest.raises(DestinationError) as err:
                await asyncio.wait_for(
                    client.complete("0123456789ab", 9, b"", np.zeros(4 << 20, np.uint64), {}),
                    RUN_BOUND_S)
            elapsed = time.monotonic() - started
    finally:
        server.close()
    what = "took no data" if peer == "reads-nothing" else "did not answer"
    assert f"the destination {what} for 0.5 s" in str(err.value)
    assert 0.5 <= elapsed < 3


def test_cli_source_times_out_on_a_stopped_dest(tmp_path):
    out = tmp_path / "r.json"
    with LoggedDestination() as dest:
        dest.signal(signal.SIGSTOP)
        proc = precopy("source", str(SMALL), "--dest", dest.url, "--quiet", "--json", str(out),
                       "--timeout", "0.5")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    report = load_json(out)
    assert report["status"] == "failed"
    assert "did not answer for 0.5 s" in report["error"]
    assert report["guest"]["running"] is True


# ---------------------------------------------------------------- the source dies or stalls

def _wait_streaming(dest: LoggedDestination) -> None:
    wait_until(lambda: dest.status()["pages-received"] > 0, 20, "pages at the destination")


def test_source_killed_mid_stream(tmp_path):
    with LoggedDestination() as dest:
        proc = start_precopy("source", str(SMALL), "--dest", dest.url, "--quiet", *SLOW)
        try:
            _wait_streaming(dest)
            assert dest.status()["streams"] >= 1
        finally:
            proc.kill()
            proc.communicate(timeout=10)
        status = dest.wait_idle()
        assert (status["failed"], status["completed"]) == (1, 0)
        lines = dest.wait_log(1)
        assert len(lines) == 1, lines
        assert "discarded (POST /migrations/" in lines[0] and "/pass/1: " in lines[0]
        # ... and the next migration goes through.
        out = tmp_path / "next.json"
        proc = precopy("source", str(SMALL), "--dest", dest.url, "--quiet", "--json", str(out))
        assert proc.returncode == 0, proc.stderr
        assert load_json(out)["verified"] is True
        assert dest.status()["completed"] == 1
        assert len(dest.lines) == 1  # a good migration logs nothing


def test_stopped_source_is_cut_off(tmp_path):
    """SIGSTOP on the source mid-stream: the destination gives up after --idle-timeout."""
    out = tmp_path / "r.json"
    with LoggedDestination("--idle-timeout", "1") as dest:
        proc = start_precopy("source", str(SMALL), "--dest", dest.url, "--quiet",
                             "--json", str(out), *SLOW)
        try:
            _wait_streaming(dest)
            proc.send_signal(signal.SIGSTOP)
            stopped = time.monotonic()
            status = dest.wait_idle(timeout=5)
            assert time.monotonic() - stopped >= 0.5  # the timeout ran, from the last byte
        finally:
            proc.send_signal(signal.SIGCONT)
            proc.communicate(timeout=30)
        assert status["failed"] == 1
        # Woken up, the source finds its stream cut: failed, its guest running; its DELETE
        # finds nothing left to discard, and says nothing more in the log.
        lines = dest.lines_until_marker()
        assert len(lines) == 1, lines
        assert "discarded" in lines[0]
        assert "source-timeout: no bytes from the source for 1 s" in lines[0]
        assert proc.returncode == 1
        report = load_json(out)
        assert report["status"] == "failed" and report["guest"]["running"] is True
        await_ok = precopy("source", str(SMALL), "--dest", dest.url, "--quiet")
        assert await_ok.returncode == 0, await_ok.stderr


async def test_silent_source_loses_its_migration():
    """A source that says hello and then nothing (killed between two requests)."""
    with LoggedDestination("--idle-timeout", "0.5") as dest:
        async with DestinationClient(dest.url) as client:
            await client.hello(Source(small(), client)._hello())
        assert dest.status()["busy"] is True
        started = time.monotonic()
        assert dest.wait_idle(timeout=5)["failed"] == 1
        assert time.monotonic() - started > 0.3
        lines = dest.wait_log(1)
        assert len(lines) == 1 and "no request from the source for 0.5 s" in lines[0]
        await assert_accepts_next(dest)


# ---------------------------------------------------------------- cancel

def test_sigint_cancels_source(tmp_path):
    out = tmp_path / "r.json"
    with LoggedDestination() as dest:
        proc = start_precopy("source", str(SMALL), "--dest", dest.url, "--json", str(out), *SLOW)
        try:
            _wait_streaming(dest)
            proc.send_signal(signal.SIGINT)
            stdout, stderr = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 1, stderr
        assert "Traceback" not in stderr and "report written to" in stderr
        report = load_json(out)
        assert report["status"] == "cancelled" and report["error"] == "cancelled by the user"
        assert report["verified"] is False and report["guest"]["running"] is True
        assert "cancelled" in stdout  # the summary table
        status = dest.wait_idle()
        assert (status["failed"], status["completed"]) == (1, 0)
        # Discarded once: on the cancelled stream's lost connection or on the source's DELETE,
        # whichever came first; the other follows from it and logs nothing.
        lines = dest.lines_until_marker()
        assert len(lines) == 1 and "discarded" in lines[0], lines


def test_sigint_reaches_into_a_long_stretch_of_the_model(tmp_path):
    """At a billion writes/s (an accepted rate) the model runs seconds of synchronous numpy
    between two awaits; SIGINT is still heard at the next slice (it took 9-21 s before)."""
    out = tmp_path / "r.json"
    with LoggedDestination() as dest:
        proc = start_precopy("source", str(SMALL), "--dest", dest.url, "--json", str(out),
                             "--set", "guest.workload.rate=1e9",
                             "--set", "migration.max-bandwidth=8MiB/s")
        try:
            _wait_streaming(dest)
            proc.send_signal(signal.SIGINT)
            sent = time.monotonic()
            stdout, stderr = proc.communicate(timeout=30)
            took = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 1, stderr
        report = load_json(out)
        assert report["status"] == "cancelled", report["error"]
        assert report["error"].startswith("cancelled by the user"), report["error"]
        assert took < 10, f"SIGINT took {took:.1f} s to stop the source"


@pytest.mark.parametrize("whom", ["process", "group", "child-first"])
def test_sigint_cancels_run(tmp_path, whom):
    """`precopy run`, interrupted alone or with its destination child (Ctrl-C: the group,
    in whatever order the two processes see it)."""
    out = tmp_path / "r.json"
    # A 16 MiB guest rewriting all of it: pass after pass, ~1 s each, never converging.
    proc = start_precopy(
        "run", str(SMALL), "--json", str(out), *SLOW, "--set", "guest.memory=16MiB",
        "--set", "guest.workload.kind=uniform", "--set", "guest.workload.rate=40000",
        "--set", "guest.workload.working-set=100%", start_new_session=True)
    try:
        lines = LineReader(proc.stdout)
        lines.wait_for(lambda line: line.lstrip().startswith("precopy"), timeout=20)
        dests = children(proc.pid)
        assert len(dests) == 1
        if whom == "group":
            os.killpg(proc.pid, signal.SIGINT)
        elif whom == "child-first":
            os.kill(dests[0], signal.SIGINT)
            time.sleep(0.3)  # time enough for a child that heeded it to be gone
            assert is_alive(dests[0])  # the parent alone decides
            proc.send_signal(signal.SIGINT)
        else:
            proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 1
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    stderr = proc.stderr.read()
    proc.stderr.close()
    assert "Traceback" not in stderr and "report written to" in stderr
    report = load_json(out)
    # Caught in the guest's stretch or between batches: the why may say where it stopped.
    assert report["status"] == "cancelled"
    assert report["error"].startswith("cancelled by the user"), report["error"]
    assert report["guest"]["running"] is True
    assert len(report["rounds"]) >= 1
    wait_until(lambda: not is_alive(dests[0]), 5, "the destination child to exit")


# ---------------------------------------------------------------- one at a time

def test_second_migration_is_refused_and_the_first_completes(tmp_path):
    first_out, second_out = tmp_path / "first.json", tmp_path / "second.json"
    with LoggedDestination() as dest:
        first = start_precopy("source", str(SMALL), "--dest", dest.url, "--quiet",
                              "--json", str(first_out), *SLOW)
        try:
            _wait_streaming(dest)
            second = precopy("source", str(SMALL), "--dest", dest.url, "--quiet",
                             "--json", str(second_out))
            assert first.poll() is None  # the refusal came while the first was streaming
            first.communicate(timeout=30)
        finally:
            if first.poll() is None:
                first.kill()
                first.communicate()
        assert second.returncode == 1
        refused = load_json(second_out)
        assert refused["status"] == "failed" and refused["guest"]["running"] is True
        assert "409 migration-busy" in refused["error"]
        assert first.returncode == 0
        assert load_json(first_out)["verified"] is True
        status = dest.status()
        assert (status["completed"], status["failed"]) == (1, 0)
        assert len(dest.lines) == 1 and "POST /migrations: migration-busy" in dest.lines[0]
