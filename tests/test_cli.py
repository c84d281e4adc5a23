"""The command line as a user meets it: exit codes, bad options, and how the suite is run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from migrate import cli
from migrate.report import Report
from migrate.summary import progress_line, summary_table
from tests.procs import BROKEN, ROOT, SMALL, TIMEOUT_S, load_json, precopy, terminate


@pytest.mark.parametrize("runner", ["python -m pytest", "pytest"])
def test_the_suite_collects_with_plain_pytest_and_python_m_pytest(runner):
    # Plain `pytest` does not put the checkout on sys.path; `pythonpath` in pyproject does.
    cmd = ([sys.executable, "-m", "pytest"] if runner != "pytest"
           else [str(Path(sys.executable).parent / "pytest")])
    proc = subprocess.run([*cmd, "--collect-only", "-q", "-p", "no:cacheprovider",
                           "tests/test_migration.py"], cwd=ROOT, text=True,
                          capture_output=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "tests collected" in proc.stdout


# ------------------------------------------------------------------ bad options: exit 2, one line


def _refused(capsys, argv: list[str], *words: str) -> None:
    """`precopy ARGV` (in this process: nothing may start) exits 2 with one line."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert all(word in lines[0] for word in words), lines[0]


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
@pytest.mark.parametrize("command", ["run", "source"])
def test_a_timeout_that_is_not_a_positive_number_is_refused(capsys, command, value):
    dest = ["--dest", "http://127.0.0.1:9"] if command == "source" else []
    _refused(capsys, [command, str(SMALL), *dest, f"--timeout={value}"], "--timeout", value)


@pytest.mark.parametrize("url", ["127.0.0.1:7450", "localhost:7450", "ftp://127.0.0.1:7450",
                                 "http://", "http://127.0.0.1:99999"])
def test_a_dest_without_http_is_a_usage_error(capsys, url):
    _refused(capsys, ["source", str(SMALL), "--dest", url], "--dest",
             "expected http://HOST:PORT")


@pytest.mark.parametrize("command", ["run", "source"])
@pytest.mark.parametrize("where,words", [
    ("missing/out.json", ["no such folder"]),
    (".", ["is a directory"]),
])
def test_an_unwritable_json_path_is_refused_before_the_migration(capsys, tmp_path, command,
                                                                 where, words):
    # The destination is nobody (port 9): a path checked only after the migration would
    # give a failed migration (exit 1), not the bad path (exit 2).
    dest = ["--dest", "http://127.0.0.1:9"] if command == "source" else []
    _refused(capsys, [command, str(SMALL), *dest, "--json", str(tmp_path / where)],
             "--json", *words)
    assert not (tmp_path / "missing").exists()


@pytest.mark.skipif(not Path("/proc/version").is_file(), reason="needs Linux's /proc")
def test_a_json_path_whose_folder_takes_no_new_file_is_refused(capsys):
    """/proc/version exists, and root may write it, but its folder takes no FILE.tmp."""
    _refused(capsys, ["run", str(SMALL), "--json", "/proc/version"], "--json", "not writable")


def test_report_of_a_file_says_it_is_a_file(capsys, tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text("")
    _refused(capsys, ["report", str(path)], str(path), "is a file, not a results folder")


# ------------------------------------------------------------------ the exit follows the migration


def test_a_reader_that_leaves_does_not_turn_a_failed_migration_into_success(tmp_path):
    # `precopy run ... | head -1`: stdout's reader is gone before the first line.
    out = tmp_path / "noflush.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "migrate", "run", str(BROKEN), "--set",
         "mmu.strategy=rmap-noflush", "--json", str(out)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    try:
        stderr = proc.stderr.read()
        code = proc.wait(timeout=TIMEOUT_S)
    finally:
        terminate(proc)
        proc.stderr.close()
    assert code == 1, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    report = load_json(out)  # still written
    assert report["verified"] is False and report["lost-count"] > 0


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_an_idle_timeout_that_is_not_a_positive_finite_number_is_refused(value):
    # A child process, bounded: a destination that accepted the value would serve for ever.
    proc = precopy("dest", "--listen", "127.0.0.1:0", f"--idle-timeout={value}", timeout=20)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--idle-timeout" in lines[0] and value in lines[0], proc.stderr


# ------------------------------------------------------------------ without a terminal: the lines


def test_without_a_terminal_the_output_is_the_pass_lines_and_the_table_alone(tmp_path):
    # On a terminal a live line is redrawn within each pass (tests/test_progress_line.py);
    # into a pipe, nothing of it: the per-pass lines and the summary, exactly.
    out = tmp_path / "piped.json"
    proc = precopy("run", str(SMALL), "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stdout and "\x1b" not in proc.stdout
    report = Report.from_dict(load_json(out))
    expected = [progress_line(r) for r in report.rounds] + summary_table(report).splitlines()
    assert proc.stdout.splitlines() == expected
