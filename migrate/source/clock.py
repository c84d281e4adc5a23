"""Two clocks behind one interface, after SimPy's Environment: `now_ns` and ways to let time pass.

- VirtualClock: time moves only by the model. A harvest takes its modeled
  cost, a latency its modeled time, and the link (`migrate.source.link`)
  moves time by the bytes it carries. Nothing sleeps, so a run is as fast as
  the data path and its results do not depend on the machine.
- WallClock: real time (monotonic). Modeled kernel time is slept, so the
  guest and the kernel stay in step; the emulator's own work takes the time
  it really takes.

Time and the link are apart, as SimPy keeps its kernel apart from its
resources: a clock knows nothing of bytes or bandwidth, and callers never ask
which clock they have. What differs between clocks is said by each clock's
methods (`host_work`, `host_ns_seen`, `link_window_ns`), so a third clock (a
paced one) is one more class, not one more branch in its callers.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from vmmodel import NS_PER_S

RATE_LIMIT_WINDOW_NS = 100_000_000  # QEMU: BUFFER_DELAY, 100 ms

__all__ = ["NS_PER_S", "RATE_LIMIT_WINDOW_NS", "Clock", "VirtualClock", "WallClock", "make_clock"]


class Clock(Protocol):
    """What the engine, the data path and the link need of time."""

    link_window_ns: float  # how far ahead of now a link may book bytes before its sender waits

    @property
    def now_ns(self) -> float: ...

    async def elapse(self, ns: float) -> None:
        """Let `ns` of modeled time pass (kernel work, a latency, bytes on the link).

        Raise `ValueError` if `ns` is negative.
        """

    async def host_work(self, modeled_ns: float) -> None:
        """The emulator has just done, for real, work the model says takes `modeled_ns`
        (lz4 compression): let that time pass unless the clock has seen it pass already."""

    def host_ns_seen(self, host_ns: float) -> float:
        """How much of `host_ns` of the emulator's own work (verification) this clock saw pass."""


def _check_elapse(ns: float) -> None:
    if ns < 0:
        raise ValueError(f"time cannot go back ({ns} ns)")


class VirtualClock:
    """Model time: it moves only when something lets it pass."""

    kind = "virtual"
    link_window_ns = 0.0  # every byte's time passes as it is sent: runs are deterministic

    def __init__(self) -> None:
        self._now = 0.0

    @property
    def now_ns(self) -> float:
        return self._now

    async def elapse(self, ns: float) -> None:
        _check_elapse(ns)
        self._now += ns

    async def host_work(self, modeled_ns: float) -> None:
        await self.elapse(modeled_ns)  # the host's real time is not this clock's

    def host_ns_seen(self, host_ns: float) -> float:
        return 0.0


class WallClock:
    """Real time since the clock was made; letting modeled time pass sleeps it."""

    kind = "wall"
    link_window_ns = float(RATE_LIMIT_WINDOW_NS)  # QEMU's rate limit: a budget per window

    def __init__(self) -> None:
        self._start = time.monotonic_ns()

    @property
    def now_ns(self) -> float:
        return float(time.monotonic_ns() - self._start)

    async def elapse(self, ns: float) -> None:
        _check_elapse(ns)
        await asyncio.sleep(ns / NS_PER_S)

    async def host_work(self, modeled_ns: float) -> None:
        return  # the work took its real time already

    def host_ns_seen(self, host_ns: float) -> float:
        return host_ns


CLOCKS: dict[str, type[VirtualClock] | type[WallClock]] = {
    "virtual": VirtualClock, "wall": WallClock,
}


def make_clock(kind: str) -> Clock:
    """Return a new clock of *kind*, its time starting now.

    Raise `ValueError` for a kind that is not in `CLOCKS`.
    """
    try:
        return CLOCKS[kind]()
    except KeyError:
        raise ValueError(f"clock: {kind!r} is not 'virtual' or 'wall'") from None
