"""The command line as a user meets it: exit codes, bad options, and how the suite is run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.procs import ROOT, TIMEOUT_S


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
