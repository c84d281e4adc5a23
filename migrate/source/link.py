"""The migration link, a resource on a clock (as a SimPy resource is on its Environment).

The wire's bandwidth as one timeline of bookings (QEMU's rate limit, the budget of
max-bandwidth / 10 per 100 ms window, is the engine's: `counters.py`): each
`transfer` books its bytes after those already booked, before it can suspend,
so parallel channels share the wire instead of each having it whole, and waits
once the bookings run more than the clock's `link_window_ns` ahead of now.

With the virtual clock the window is 0: every transfer lets exactly its
bytes' time pass (B bytes take B / bandwidth however many channels carry
them, and the clock's calls never suspend, so channels cannot interleave
inside one). With the wall clock the bytes really cross the socket and the
link only holds them to the bandwidth.
"""

from __future__ import annotations

from migrate.source.clock import NS_PER_S, Clock


def _checked_bandwidth(bandwidth_bps: float) -> float:
    if not bandwidth_bps > 0:
        raise ValueError(f"bandwidth must be positive, got {bandwidth_bps!r}")
    return bandwidth_bps


class Link:
    """Bytes put on the migration link, held to `bandwidth_bps` on `clock`'s time."""

    def __init__(self, clock: Clock, bandwidth_bps: float) -> None:
        """Raise `ValueError` if *bandwidth_bps* is not positive."""
        self.clock = clock
        self.bandwidth_bps = _checked_bandwidth(bandwidth_bps)
        self._booked_until = 0.0  # when the link has carried every byte handed to it so far

    async def transfer(self, nbytes: int) -> float:
        """Put *nbytes* on the link; return the time they take on it, in ns.

        Returns once the bookings are no more than a window ahead of now.
        """
        clock = self.clock
        now = clock.now_ns
        ns = nbytes * NS_PER_S / self.bandwidth_bps
        # Written so that with a window of 0 the wait is exactly `ns` (the bookings never
        # run ahead of the virtual clock): the same figures, bit for bit, as a plain += ns.
        queued_ns = max(self._booked_until - now, 0.0)
        self._booked_until = max(self._booked_until, now) + ns
        wait_ns = queued_ns + ns - clock.link_window_ns
        if wait_ns > 0:
            await clock.elapse(wait_ns)
        return ns

    async def drain(self) -> None:
        """Return once the link has carried every byte handed to `transfer`."""
        behind_ns = self._booked_until - self.clock.now_ns
        if behind_ns > 0:
            await self.clock.elapse(behind_ns)
