"""`precopy dest` as a child process on a free loopback port.

One launcher for everything that needs a destination next to it: `precopy
run`, `precopy bench wire`, `precopy bench scale` and the end-to-end tests. The child is a real
`python -m migrate dest` process, so it is exactly what a person starts by hand;
it prints the URL it listens on as its first line, and that is how we learn it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from migrate.dest.server import IDLE_TIMEOUT_S
from vmmodel import PAGE_SIZE

TERM_GRACE_S = 10.0  # after SIGTERM, before SIGKILL
# The source is silent between its last page and COMPLETE while it digests every page
# (`digest.memory_digests`). A generated backing is digested from its templates (~5 ns a
# page: 20 ms for 4 GiB), but a stored one is hashed byte by byte: 3.3 us a page measured
# on the 2-core Intel box with another job beside it, 55 s for 64 GiB (`guest.memory-backing
# = "stored"` is allowed at any size). `run` gives its destination three times that.
SOURCE_SILENT_NS_PER_PAGE = 10_000


def run_destination_args(npages: int, store: str) -> list[str]:
    """The options `precopy run` starts its destination with, for a guest of *npages*.

    `--once`; `--max-memory` the guest's size, so that *store* (`image` or
    `digests`, see `config.host.run_destination_store`) always fits; an idle
    timeout that outlasts the source's silent digesting of a large guest.
    """
    idle_s = max(IDLE_TIMEOUT_S, npages * SOURCE_SILENT_NS_PER_PAGE / 1e9)
    return ["--once", "--max-memory", str(npages * PAGE_SIZE), "--store", store,
            "--idle-timeout", f"{idle_s:g}"]


class DestinationProcess:
    """A `precopy dest --listen 127.0.0.1:0 EXTRA...` child; `url` is where it listens.

    *stderr* is passed to `subprocess.Popen` (None: inherited; `subprocess.PIPE`:
    the caller reads the log from `proc.stderr`). *ignore_sigint* makes the child
    ignore Ctrl-C, which reaches the whole process group: the parent alone then
    decides, by cancelling the migration (which ends a `--once` child) or by `stop`.
    Raise `RuntimeError` if the child does not print its URL.
    """

    def __init__(self, *extra: str, stderr: int | IO[str] | None = None,
                 env: Mapping[str, str] | None = None, cwd: str | Path | None = None,
                 ignore_sigint: bool = False) -> None:
        cmd = [sys.executable, "-m", "migrate", "dest", "--listen", "127.0.0.1:0", *extra]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=cwd,
            env=None if env is None else {**os.environ, **env},
            preexec_fn=_ignore_sigint if ignore_sigint else None,
        )
        try:
            line = self.proc.stdout.readline() if self.proc.stdout else ""
        except BaseException:  # Ctrl-C while it starts
            self.stop()
            raise
        if "http://" not in line:
            log = self.proc.stderr.read() if stderr == subprocess.PIPE and self.proc.stderr else ""
            self.stop()
            raise RuntimeError(f"the destination did not start (it printed {line!r}"
                               + (f", log {log.strip()!r})" if log.strip() else ")"))
        self.url = line[line.index("http://"):].split()[0]

    def __enter__(self) -> DestinationProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait(self, timeout: float | None = None) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self, grace_s: float = 0.0) -> None:
        """Give it *grace_s* to end on its own (a `--once` child does once the migration
        ends), then `terminate` it; close our ends of its pipes."""
        if grace_s > 0:
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        terminate(self.proc)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()


def terminate(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after `TERM_GRACE_S`; a stopped process is continued first
    (it would sit on SIGTERM)."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGCONT)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=TERM_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
