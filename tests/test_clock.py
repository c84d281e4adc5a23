"""The two clocks: the virtual one moves by the model, the wall one holds sends to the rate."""

from __future__ import annotations

import time

import pytest

from migrate.source.clock import VirtualClock, WallClock

NS = 1_000_000_000


async def test_virtual_transfer_takes_bytes_over_bandwidth_and_drain_adds_nothing():
    clock = VirtualClock(10e6)
    await clock.transfer(2_000_000)
    assert clock.now_ns == pytest.approx(0.2 * NS)
    await clock.drain()
    assert clock.now_ns == pytest.approx(0.2 * NS)
    clock.set_bandwidth(100e6)  # the stop-and-copy's unlimited link
    await clock.transfer(2_000_000)
    assert clock.now_ns == pytest.approx(0.22 * NS)


async def test_wall_clock_drain_waits_for_the_link():
    """Real time on purpose: this is the clock that measures it (bounded to ~0.2 s)."""
    clock = WallClock(10e6)
    started = time.monotonic()
    await clock.transfer(2_000_000)  # returns up to one 100 ms window early...
    await clock.drain()  # ...so a pass's bandwidth is only measured after this
    elapsed = time.monotonic() - started
    assert 0.19 <= elapsed < 1.0
    assert 2_000_000 / elapsed <= 10e6 * 1.05


def test_bandwidth_must_be_positive():
    for clock in (VirtualClock(1e6), WallClock(1e6)):
        with pytest.raises(ValueError):
            clock.set_bandwidth(0)
