"""Two clocks behind one interface, after SimPy's Environment: `now_ns` and ways to let time pass.

- VirtualClock: time moves only by the model. Sending N bytes takes
  N / bandwidth; a harvest takes its modeled cost; latency is added where a
  round trip is waited for. Nothing sleeps, so a run is as fast as the data
  path and its results do not depend on the machine.
- WallClock: real time (monotonic). Sends are held to the bandwidth as QEMU's
  rate limiter does (a budget of bandwidth/10 per 100 ms window); modeled
  kernel time is slept, so the guest and the kernel stay in step.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

NS_PER_S = 1_000_000_000
RATE_LIMIT_WINDOW_NS = 100_000_000  # QEMU: BUFFER_DELAY, 100 ms


class Clock(Protocol):
    kind: str

    @property
    def now_ns(self) -> float: ...

    async def elapse(self, ns: float) -> None:
        """Let `ns` of modeled time pass (kernel work, a latency)."""

    async def transfer(self, nbytes: int) -> None:
        """`nbytes` were put on the link; return when the link has carried them."""


class VirtualClock:
    kind = "virtual"

    def __init__(self, bandwidth_bps: float) -> None:
        if bandwidth_bps <= 0:
            raise ValueError("bandwidth must be positive")
        self.bandwidth_bps = bandwidth_bps
        self._now = 0.0

    @property
    def now_ns(self) -> float:
        return self._now

    async def elapse(self, ns: float) -> None:
        if ns < 0:
            raise ValueError(f"time cannot go back ({ns} ns)")
        self._now += ns

    async def transfer(self, nbytes: int) -> None:
        self._now += nbytes * NS_PER_S / self.bandwidth_bps


class WallClock:
    kind = "wall"

    def __init__(self, bandwidth_bps: float) -> None:
        if bandwidth_bps <= 0:
            raise ValueError("bandwidth must be positive")
        self.bandwidth_bps = bandwidth_bps
        self._start = time.monotonic_ns()
        self._window_start = 0.0
        self._window_bytes = 0

    @property
    def now_ns(self) -> float:
        return float(time.monotonic_ns() - self._start)

    async def elapse(self, ns: float) -> None:
        if ns < 0:
            raise ValueError(f"time cannot go back ({ns} ns)")
        await asyncio.sleep(ns / NS_PER_S)

    async def transfer(self, nbytes: int) -> None:
        now = self.now_ns
        if now - self._window_start >= RATE_LIMIT_WINDOW_NS:
            self._window_start, self._window_bytes = now, 0
        self._window_bytes += nbytes
        budget = self.bandwidth_bps * RATE_LIMIT_WINDOW_NS / NS_PER_S
        if self._window_bytes >= budget:
            # Over this window's budget: wait for the next window, as migration_rate_limit does,
            # and carry the excess into it so the average holds to the limit.
            await asyncio.sleep((self._window_start + RATE_LIMIT_WINDOW_NS - now) / NS_PER_S)
            self._window_start = self.now_ns
            self._window_bytes -= budget


def make_clock(kind: str, bandwidth_bps: float) -> Clock:
    """Raise `ValueError` for a kind other than "virtual" or "wall"."""
    if kind == "virtual":
        return VirtualClock(bandwidth_bps)
    if kind == "wall":
        return WallClock(bandwidth_bps)
    raise ValueError(f"clock: {kind!r} is not 'virtual' or 'wall'")
