"""Soak: 50 migrations back to back into one destination process.

Every migration must verify, and the destination must not grow: its resident
memory and its open file descriptors after the last migration are those after
the first few (the warm-up: allocator arenas, imports, the first guest image).
Slow, so deselected by default; run it with:

    .venv/bin/python -m pytest -m slow tests/test_soak.py -s
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.peers import LoggedDestination
from tests.procs import SMALL, load_json, precopy

MIGRATIONS = int(os.environ.get("PRECOPY_SOAK_MIGRATIONS", "50"))
WARM_UP = 5
RSS_SLACK_KIB = 32 << 10  # growth allowed after the warm-up, for 64 MiB guests: half of one


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.slow
def test_soak_fifty_migrations_into_one_destination(tmp_path):
    samples = []  # (migration, RSS KiB, fds)
    started = time.monotonic()
    with LoggedDestination() as dest:
        samples.append((0, rss_kib(dest.pid), open_fds(dest.pid)))
        for i in range(1, MIGRATIONS + 1):
            out = tmp_path / f"{i}.json"
            # Seeds and strategies vary, as a day of real use would.
            strategy = ("heuristic", "walk", "rmap")[i % 3]
            proc = precopy("source", str(SMALL), "--dest", dest.url, "--quiet",
                           "--json", str(out), "--set", f"seed={i}",
                           "--set", f"mmu.strategy={strategy}", timeout=120)
            assert proc.returncode == 0, (i, proc.stderr)
            assert load_json(out)["verified"] is True, i
            samples.append((i, rss_kib(dest.pid), open_fds(dest.pid)))
        status = dest.status()
        lines = list(dest.lines)
    wall = time.monotonic() - started

    print(f"\nsoak: {MIGRATIONS} migrations in {wall:.1f} s")
    for i, rss, fds in samples:
        if i in (0, 1, WARM_UP) or i % 10 == 0 or i == MIGRATIONS:
            print(f"  after {i:3d}: RSS {rss / 1024:7.1f} MiB, {fds} open fds")

    assert status["completed"] == MIGRATIONS and status["failed"] == 0
    assert lines == []  # nothing worth a warning in 50 good migrations
    _, warm_rss, warm_fds = samples[WARM_UP]
    assert max(fds for _, _, fds in samples[WARM_UP:]) <= warm_fds
    assert max(rss for _, rss, _ in samples[WARM_UP:]) - warm_rss < RSS_SLACK_KIB
