"""Two clocks behind one interface, after SimPy's Environment: `now_ns` and ways to let time pass.

- VirtualClock: time moves only by the model. Sending N bytes takes
  N / bandwidth; a harvest takes its modeled cost; latency is added where a
  round trip is waited for. Nothing sleeps, so a run is as fast as the data
  path and its results do not depend on the machine.
- WallClock: real time (monotonic). Sends are held to the bandwidth as QEMU's
  rate limiter does (a budget of bandwidth/10 per 100 ms window), shared by
  parallel channels; modeled kernel time is slept, so the guest and the
  kernel stay in step.
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

    async def drain(self) -> None:
        """Return once the link has carried every byte handed to `transfer`."""

    def set_bandwidth(self, bandwidth_bps: float) -> None:
        """Change the rate the link is held to (QEMU lifts its limit at stop-and-copy)."""


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
        # Never suspends: parallel channels' calls queue on one timeline, so B bytes take
        # B / bandwidth however many channels carry them (they share the link).
        self._now += nbytes * NS_PER_S / self.bandwidth_bps

    async def drain(self) -> None:
        return  # transfer() already moved time past every byte

    def set_bandwidth(self, bandwidth_bps: float) -> None:
        if bandwidth_bps <= 0:
            raise ValueError("bandwidth must be positive")
        self.bandwidth_bps = bandwidth_bps


class WallClock:
    kind = "wall"

    def __init__(self, bandwidth_bps: float) -> None:
        if bandwidth_bps <= 0:
            raise ValueError("bandwidth must be positive")
        self.bandwidth_bps = bandwidth_bps
        self._start = time.monotonic_ns()
        self._booked_until = 0.0  # when the link has carried every byte handed to it so far

    @property
    def now_ns(self) -> float:
        return float(time.monotonic_ns() - self._start)

    async def elapse(self, ns: float) -> None:
        if ns < 0:
            raise ValueError(f"time cannot go back ({ns} ns)")
        await asyncio.sleep(ns / NS_PER_S)

    async def transfer(self, nbytes: int) -> None:
        # QEMU's limit (a window's budget of bandwidth/10 per 100 ms, the excess carried over)
        # as one timeline of bookings: each call books its bytes after those already booked,
        # before it can suspend, so parallel channels share the budget instead of each
        # spending it; a call waits once the bookings run more than a window ahead.
        now = self.now_ns
        self._booked_until = max(self._booked_until, now) + nbytes * NS_PER_S / self.bandwidth_bps
        ahead_ns = self._booked_until - now - RATE_LIMIT_WINDOW_NS
        if ahead_ns > 0:
            await asyncio.sleep(ahead_ns / NS_PER_S)

    async def drain(self) -> None:
        # transfer() lets bookings run up to a window ahead: a pass has not gone until they end.
        behind_ns = self._booked_until - self.now_ns
        if behind_ns > 0:
            await asyncio.sleep(behind_ns / NS_PER_S)

    def set_bandwidth(self, bandwidth_bps: float) -> None:
        if bandwidth_bps <= 0:
            raise ValueError("bandwidth must be positive")
        self.bandwidth_bps = bandwidth_bps


def make_clock(kind: str, bandwidth_bps: float) -> Clock:
    """Raise `ValueError` for a kind other than "virtual" or "wall"."""
    if kind == "virtual":
        return VirtualClock(bandwidth_bps)
    if kind == "wall":
        return WallClock(bandwidth_bps)
    raise ValueError(f"clock: {kind!r} is not 'virtual' or 'wall'")
