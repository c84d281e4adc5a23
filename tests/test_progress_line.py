"""Progress within a pass: the sample, the meter that takes it, the line that shows it.

The renderer is pure (a `PassProgress` in, a line out), the meter is driven by a
fake timer, the engine's samples come from an in-process migration, and the
terminal's view from a real `precopy run` on a pseudo-terminal.
"""

from __future__ import annotations

import io
import logging
import os
import pty
import select
import subprocess
import sys
import time
from argparse import Namespace

import pytest

from migrate import cli
from migrate.config import load_scenario
from migrate.live import CLEAR, LiveLine, format_count, format_pass_progress, format_seconds
from migrate.report import Report
from migrate.source.client import DestinationClient
from migrate.source.engine import Source
from migrate.source.progress import PassMeter, PassProgress
from migrate.summary import progress_line, summary_table
from tests.procs import ROOT, SMALL, TIMEOUT_S, load_json
from tests.test_migration import _strip_wall  # the report less the emulator's own times

GIB_PAGES = 1 << 18


def sample(sent: int = GIB_PAGES // 3, total: int = GIB_PAGES, *, virtual_s: float = 2.0,
           wall_s: float = 0.5, dirty: int = 37_449, phase: str = "precopy",
           pass_no: int = 3) -> PassProgress:
    return PassProgress(pass_no=pass_no, phase=phase, pages_sent=sent, pages_total=total,
                        virtual_ns=virtual_s * 1e9, wall_s=wall_s, dirty_pages=dirty)


# ------------------------------------------------------------------ the sample's figures


def test_the_sample_derives_rate_speed_and_etas_from_what_is_done():
    p = sample(sent=1000, total=4000, virtual_s=2.0, wall_s=0.5)
    assert p.pages_per_s == 500
    assert p.speedup == 4.0
    assert p.eta_virtual_s == pytest.approx(6.0)  # 3000 pages left at 500 a second
    assert p.eta_wall_s == pytest.approx(1.5)


def test_no_eta_before_anything_is_sent_and_none_needed_once_all_is():
    start = sample(sent=0, virtual_s=0.0, wall_s=0.0)
    assert start.pages_per_s == 0 and start.speedup == 0
    assert start.eta_virtual_s is None and start.eta_wall_s is None
    no_time = sample(sent=512, virtual_s=0.0, wall_s=0.0)  # a batch, but no time passed yet
    assert no_time.eta_virtual_s is None and no_time.eta_wall_s is None
    done = sample(sent=GIB_PAGES)
    assert done.eta_virtual_s == 0.0 and done.eta_wall_s == 0.0


# ------------------------------------------------------------------ the line (pure)


def test_a_wide_line_says_everything():
    line = format_pass_progress(sample(), width=200)
    assert line == ("precopy 3: 87.4k/262k pages 33%, 171 MiB/s, 4.0x real time, 37.4k dirty, "
                    "ETA 4.0s (1.0s wall)")


def test_the_eta_and_the_rate_are_dashes_while_the_rate_is_zero():
    line = format_pass_progress(sample(sent=0, virtual_s=0.0, wall_s=0.0), width=200)
    assert line == "precopy 3: 0/262k pages 0%, -- MiB/s, 37.4k dirty, ETA -- (-- wall)"


@pytest.mark.parametrize("total", [1, 9_999, 16_384, GIB_PAGES, 1 << 24, 1 << 26, 1 << 30])
@pytest.mark.parametrize("phase,pass_no", [("precopy", 1), ("precopy", 30),
                                          ("stop-and-copy", 31)])
@pytest.mark.parametrize("width", [10, 40, 60, 79, 120])
def test_a_line_never_exceeds_its_width(total, phase, pass_no, width):
    for sent in (0, total // 3, total):
        for virtual_s, wall_s in ((0.0, 0.0), (1e-6, 3.0), (4000.0, 0.2), (99_999.0, 86_400.0)):
            p = sample(sent, total, virtual_s=virtual_s, wall_s=wall_s, dirty=total,
                       phase=phase, pass_no=pass_no)
            line = format_pass_progress(p, width)
            assert len(line) <= width, line
            assert "\n" not in line and "\r" not in line


def test_at_80_columns_a_64_gib_pass_keeps_its_pages_rate_dirty_and_both_etas():
    p = sample(sent=(1 << 24) // 3, total=1 << 24, virtual_s=40.0, wall_s=15.0, dirty=2_400_000)
    line = format_pass_progress(p, 79)
    assert line == ("precopy 3: 5.59M/16.8M pages 33%, 546 MiB/s, 2.40M dirty, ETA 1:20 "
                    "(30.0s wall)")


def test_a_short_width_drops_the_speed_then_dirty_rate_wall_eta_and_keeps_the_pages():
    p = sample()
    full = format_pass_progress(p, 200)
    labels = ["real time", "dirty", "MiB/s", "wall", "ETA"]
    gone: list[str] = []
    for width in range(len(full), 0, -1):
        line = format_pass_progress(p, width)
        gone += [label for label in labels if label not in line and label not in gone]
    assert gone == labels
    head = "precopy 3: 87.4k/262k pages 33%"
    assert format_pass_progress(p, len(head) + 9) == head
    assert format_pass_progress(p, len(head) + 10) == head + ", ETA 4.0s"
    assert format_pass_progress(p, 12) == head[:12]  # never wider, even then


@pytest.mark.parametrize("n,text", [(0, "0"), (9_999, "9,999"), (10_000, "10.0k"),
                                    (262_144, "262k"), (999_999, "1.00M"),
                                    (16_777_216, "16.8M"), (67_108_864, "67.1M"),
                                    (1 << 30, "1.07G")])
def test_counts_are_exact_when_small_and_three_digits_when_large(n, text):
    assert format_count(n) == text


@pytest.mark.parametrize("seconds,text", [(None, "--"), (0.04, "0.0s"), (59.9, "59.9s"),
                                          (59.96, "1:00"), (125, "2:05"), (3725, "1:02:05")])
def test_seconds_read_in_tenths_under_a_minute_then_as_the_sweep_writes_them(seconds, text):
    assert format_seconds(seconds) == text


# ------------------------------------------------------------------ the meter


class FakeTimer:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_meter_samples_the_first_batch_then_at_most_once_per_interval():
    timer, seen = FakeTimer(), []
    meter = PassMeter(seen.append, dirty=lambda: 42, every_s=0.25, timer=timer)
    meter.start(1, "precopy", 1000, 256, now_ns=5e9)
    for step in range(4):  # batches at 100, 100.125, 100.25 and 100.375 s
        meter.batch(now_ns=5e9 + step * 1e8)
        timer.now += 0.125
    assert [(p.pages_sent, p.wall_s, p.virtual_ns) for p in seen] == [(0, 0.0, 0.0),
                                                                      (512, 0.25, 2e8)]
    assert seen[1].dirty_pages == 42
    timer.now += 0.25
    meter.start(2, "stop-and-copy", 300, 256, now_ns=9e9)  # the interval carries over passes
    meter.batch(now_ns=9e9)
    meter.batch(now_ns=9e9)
    timer.now += 0.25
    meter.batch(now_ns=9e9)
    assert [(p.pass_no, p.phase, p.pages_sent, p.pages_total) for p in seen[2:]] == [
        (2, "stop-and-copy", 0, 300), (2, "stop-and-copy", 300, 300)]  # capped at the pass's


def test_the_meter_asks_for_the_dirty_count_only_when_it_samples():
    timer, asked = FakeTimer(), []
    meter = PassMeter(lambda p: None, dirty=lambda: asked.append(1) or 0, every_s=1.0,
                      timer=timer)
    meter.start(1, "precopy", 10_000, 16, now_ns=0.0)
    for _ in range(100):
        meter.batch(now_ns=0.0)
    assert len(asked) == 1  # the bitmaps' scan is not per batch


# ------------------------------------------------------------------ the engine's samples




async def _migrate(url: str, **kwargs) -> Report:
    scenario = load_scenario(SMALL, ["migration.downtime-limit=30ms"])  # two precopy passes
    async with DestinationClient(url, timeout_s=10) as client:
        report = await Source(scenario, client, **kwargs).run()
    assert report.ok, report.error
    return report


async def test_the_engine_samples_every_pass_with_pages_sent_rising(dest_url):
    seen: list[PassProgress] = []
    report = await _migrate(dest_url, pass_progress=seen.append, pass_progress_every_s=0.0)
    # An interval that sent nothing (a sync right before the completion's) has no batch.
    rounds = {r.pass_no: r for r in report.rounds if r.pages_sent}
    assert len(rounds) >= 2 and {p.pass_no for p in seen} == set(rounds)
    batch = load_scenario(SMALL).migration.batch_pages
    for pass_no, record in rounds.items():
        samples = [p for p in seen if p.pass_no == pass_no]
        assert all(p.phase == record.phase and p.pages_total == record.dirty_pages
                   for p in samples)
        sent = [p.pages_sent for p in samples]
        assert sent[0] == 0 and sent == sorted(sent) and sent[-1] < record.pages_sent
        # every batch, at 0 s; the rate budget may cut a batch short
        assert len(samples) >= -(-record.pages_sent // batch)
        assert [p.virtual_ns for p in samples] == sorted(p.virtual_ns for p in samples)
        assert samples[-1].virtual_ns <= record.duration_ms * 1e6
    # The pages still to send: falling as the stop-and-copy sends them, the guest paused.
    # At its first batch every page it sends is still to send.
    stop = [p.dirty_pages for p in seen if p.phase == "stop-and-copy"]
    last = report.rounds[-1]
    assert stop and stop == sorted(stop, reverse=True) and stop[0] == last.pages_sent


async def test_sampling_changes_nothing_in_the_report(dest_url):
    plain = await _migrate(dest_url)
    sampled = await _migrate(dest_url, pass_progress=lambda p: None, pass_progress_every_s=0.0)
    assert _strip_wall(sampled.to_dict()) == _strip_wall(plain.to_dict())


# ------------------------------------------------------------------ the terminal's line


class TtyBuffer(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_live_line_is_drawn_in_place_and_cleared_once():
    out = TtyBuffer()
    with LiveLine(out, columns=80) as live:
        live.show(sample())
        live.show(sample(sent=GIB_PAGES // 2))
        live.clear()
        live.clear()  # nothing drawn: nothing written
        live.show(sample())
    text = out.getvalue()
    assert text.count(CLEAR) == 5  # three draws, one clear (the second is none), the exit's
    assert text.endswith(format_pass_progress(sample(), 79) + CLEAR)
    assert all(len(seg) < 80 for seg in text.split(CLEAR))


def test_a_log_line_clears_the_live_line_first(monkeypatch):
    out, err = TtyBuffer(), io.StringIO()
    handler = logging.StreamHandler(err)

    class Both(logging.Handler):  # what reaches the terminal, in the order it does
        def emit(self, record: logging.LogRecord) -> None:
            out.write(f"<log {record.getMessage()}>")

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [handler, Both()])
    with LiveLine(out, columns=80) as live:
        live.show(sample())
        logging.getLogger("precopy.test").warning("trouble")
    assert out.getvalue().endswith(CLEAR + "<log trouble>")  # cleared, then the log line
    logging.getLogger("precopy.test").warning("later")  # the filter is gone with the line
    assert out.getvalue().endswith("<log trouble><log later>")
    assert not handler.filters


def test_a_terminal_that_went_away_does_not_stop_the_migration():
    class Gone(TtyBuffer):
        def write(self, text: str) -> int:
            raise OSError(5, "Input/output error")

    live = LiveLine(Gone(), columns=80)
    live.show(sample())  # no exception: the line gives up, the migration goes on
    live.clear()
    assert live.broken and not live.drawn


@pytest.mark.parametrize("quiet,tty,term,drawn", [
    (False, True, "xterm", True), (True, True, "xterm", False),
    (False, False, "xterm", False), (False, True, "dumb", False),
])
def test_the_live_line_is_only_for_a_terminal_without_quiet(monkeypatch, quiet, tty, term,
                                                            drawn):
    monkeypatch.setattr(sys, "stdout", TtyBuffer() if tty else io.StringIO())
    monkeypatch.setenv("TERM", term)
    assert (cli._live_line(Namespace(quiet=quiet)) is not None) is drawn


def _read_pty(master: int, proc: subprocess.Popen, timeout: float) -> bytes:
    """Everything the child writes to the terminal, until it exits (bounded)."""
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    return b"".join(chunks)


def test_on_a_terminal_the_live_line_appears_and_the_pass_lines_replace_it(tmp_path):
    out = tmp_path / "tty.json"
    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": "80", "TERM": "xterm"}
    proc = subprocess.Popen([sys.executable, "-m", "migrate", "run", str(SMALL), "--json",
                             str(out)], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=slave,
                            stderr=subprocess.PIPE, env=env)
    os.close(slave)
    try:
        raw = _read_pty(master, proc, TIMEOUT_S)
        code = proc.wait(timeout=TIMEOUT_S)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
        stderr = proc.stderr.read().decode()
        proc.stderr.close()
    assert code == 0, stderr
    text = raw.decode().replace("\r\n", "\n")  # the terminal's own newline translation
    drawn = [seg for seg in text.split(CLEAR) if " pages " in seg and "ETA" in seg]
    assert drawn, text  # the first batch is always sampled
    assert all(len(seg) <= 79 and "\n" not in seg for seg in drawn)
    # What the terminal shows once it is over: on each line, what the last clear left.
    shown = [line.split(CLEAR)[-1] for line in text.split("\n")]
    report = Report.from_dict(load_json(out))
    expected = [progress_line(r) for r in report.rounds] + summary_table(report).splitlines()
    assert shown == [*expected, ""]  # every live line gone; the pass lines intact
