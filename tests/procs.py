"""Real processes for end-to-end tests: the CLI as a user runs it, on 127.0.0.1 only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from migrate.launch import DestinationProcess, terminate

ROOT = Path(__file__).resolve().parent.parent
SMALL = ROOT / "configs" / "tests" / "small.toml"
BROKEN = ROOT / "configs" / "broken.toml"  # every broken strategy is caught on it
TIMEOUT_S = 60  # every process a test starts is bounded


def precopy(*args: str, timeout: float = TIMEOUT_S, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "migrate", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=timeout, **kwargs)


def load_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


class Destination(DestinationProcess):
    """`precopy dest` on a free loopback port, its log piped, stopped (and reaped) on exit."""

    def __init__(self, *extra: str, env: dict[str, str] | None = None) -> None:
        super().__init__(*extra, stderr=subprocess.PIPE, cwd=ROOT,
                         env={"PYTHONUNBUFFERED": "1", **(env or {})})

    def wait(self, timeout: float = TIMEOUT_S) -> int:
        return self.proc.wait(timeout=timeout)


__all__ = ["BROKEN", "ROOT", "SMALL", "TIMEOUT_S", "Destination", "load_json", "precopy",
           "terminate"]
