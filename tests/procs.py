"""Real processes for end-to-end tests: the CLI as a user runs it, on 127.0.0.1 only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMALL = ROOT / "configs" / "tests" / "small.toml"
TIMEOUT_S = 60  # every process a test starts is bounded


def precopy(*args: str, timeout: float = TIMEOUT_S, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "migrate", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=timeout, **kwargs)


def load_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


class Destination:
    """`precopy dest` on a free loopback port, stopped (and reaped) on exit."""

    def __init__(self, *extra: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "migrate", "dest", "--listen", "127.0.0.1:0", *extra],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        line = self.proc.stdout.readline()
        if "http://127.0.0.1:" not in line:
            raise RuntimeError(f"dest did not start: {line!r} {self.proc.stderr.read()}")
        self.url = line[line.index("http://"):].split()[0]

    def __enter__(self) -> Destination:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait(self, timeout: float = TIMEOUT_S) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        terminate(self.proc)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()


def terminate(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 10 s; a stopped process is continued first."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGCONT)  # a stopped process would sit on SIGTERM
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
