"""Time and the link: the virtual clock moves by the model, the wall one holds sends to the rate.

The link is a resource on whatever clock it is given, so a third clock (a
paced one) needs no branch in the link, the data path or the engine.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from migrate import wire
from migrate.source import datapath
from migrate.source.clock import VirtualClock, WallClock, make_clock
from migrate.source.link import Link
from vmmodel import CostTable

NS = 1_000_000_000


async def test_virtual_transfer_takes_bytes_over_bandwidth_and_drain_adds_nothing():
    clock = VirtualClock()
    link = Link(clock, 10e6)
    assert await link.transfer(2_000_000) == pytest.approx(0.2 * NS)
    assert clock.now_ns == pytest.approx(0.2 * NS)
    await link.drain()
    assert clock.now_ns == pytest.approx(0.2 * NS)


async def test_virtual_link_time_is_the_plain_sum_bit_for_bit():
    """Reports stay the same field for field: the booking timeline adds exactly nbytes / bw."""
    clock = VirtualClock()
    link = Link(clock, 1192.1 * 2**20)
    expected = 0.0
    for nbytes, kernel_ns in [(1_052_688, 0.0), (3, 17.3), (262_160, 0.1), (0, 5e6), (777, 0.0)]:
        await link.transfer(nbytes)
        expected += nbytes * NS / (1192.1 * 2**20)
        await clock.elapse(kernel_ns)  # a harvest between batches
        expected += kernel_ns
        assert clock.now_ns == expected


async def test_wall_clock_drain_waits_for_the_link():
    """Real time on purpose: this is the clock that measures it (bounded to ~0.2 s)."""
    link = Link(WallClock(), 10e6)
    started = time.monotonic()
    await link.transfer(2_000_000)  # returns up to one 100 ms window early...
    await link.drain()  # ...so a pass's bandwidth is only measured after this
    elapsed = time.monotonic() - started
    assert 0.19 <= elapsed < 1.0
    assert 2_000_000 / elapsed <= 10e6 * 1.05


@pytest.mark.parametrize("bandwidth", [0, -1.0, float("nan")])
def test_bandwidth_must_be_positive_for_every_clock(bandwidth):
    for clock in (VirtualClock(), WallClock()):
        with pytest.raises(ValueError, match="bandwidth must be positive"):
            Link(clock, bandwidth)


def test_make_clock_names_the_kinds():
    assert isinstance(make_clock("virtual"), VirtualClock)
    assert isinstance(make_clock("wall"), WallClock)
    with pytest.raises(ValueError, match="'real' is not 'virtual' or 'wall'"):
        make_clock("real")


class SteppedClock:
    """A third clock, as a paced one would be: no `kind`, only the protocol."""

    link_window_ns = 0.0

    def __init__(self) -> None:
        self.now_ns = 0.0
        self.host = []

    async def elapse(self, ns: float) -> None:
        self.now_ns += ns

    async def host_work(self, modeled_ns: float) -> None:
        self.host.append(modeled_ns)
        self.now_ns += modeled_ns

    def host_ns_seen(self, host_ns: float) -> float:
        return 0.0


async def test_a_third_clock_needs_no_branch_in_the_data_path():
    """lz4 slower than the link: the data path asks the clock to let the excess pass."""
    clock = SteppedClock()
    link = Link(clock, 1e12)  # a link far faster than lz4
    memory = np.zeros((4, wire.PAGE_SIZE), dtype=np.uint8)
    memory[:, :64] = 7  # compressible, not zero
    frame = wire.encode_gathered(1, memory, np.arange(4), compress=True)
    costs = CostTable()
    await datapath._account(link, frame, compress=True, channels=2, costs=costs)
    link_ns = frame.nbytes * NS / 1e12
    assert clock.host == [pytest.approx(4 * costs.lz4_page_shrunk_ns / 2 - link_ns)]
    assert clock.now_ns == pytest.approx(4 * costs.lz4_page_shrunk_ns / 2)


async def test_the_wall_clock_takes_host_work_as_already_done():
    clock = WallClock()
    before = clock.now_ns
    await clock.host_work(10 * NS)  # would be 10 s if it slept
    assert clock.now_ns - before < 0.5 * NS
    assert clock.host_ns_seen(3.0) == 3.0 and VirtualClock().host_ns_seen(3.0) == 0.0
