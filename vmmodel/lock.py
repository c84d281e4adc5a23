"""mmu_lock: when the kernel holds it, and how long faulting vCPUs wait.

A harvest registers a window [start, end) in which the lock is taken
`acquisitions` times, each hold `hold_ns` long on average. A vCPU that
faults inside a window waits: until the end of a single long hold (the slot
walk), or on average half a hold when the lock is taken and dropped per gfn
(ticket spinlocks hand it over in order).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LockWindow:
    start_ns: float
    end_ns: float
    hold_ns: float
    acquisitions: int

    @property
    def single_hold(self) -> bool:
        return self.acquisitions <= 1


class MmuLock:
    def __init__(self) -> None:
        self.windows: list[LockWindow] = []
        self.acquisitions = 0
        self.hold_ns = 0.0

    def hold(self, start_ns: float, hold_ns: float, acquisitions: int, span_ns: float) -> None:
        """Record `acquisitions` holds of `hold_ns` in total, spread over `span_ns` from start."""
        if acquisitions <= 0:
            return
        self.acquisitions += acquisitions
        self.hold_ns += hold_ns
        self.windows.append(
            LockWindow(start_ns, start_ns + span_ns, hold_ns / acquisitions, acquisitions)
        )

    def stall_ns(self, t0: float, t1: float, faults: np.ndarray) -> np.ndarray:
        """How long each vCPU, faulting `faults[v]` times in [t0, t1), waits for the lock.

        The model places a vCPU's first fault at the start of the overlap.
        """
        stall = np.zeros(len(faults))
        faulted = faults > 0
        for w in self.windows:  # a few windows per harvest, not per page
            lo, hi = max(t0, w.start_ns), min(t1, w.end_ns)
            if hi <= lo:
                continue
            if w.single_hold:
                stall[faulted] += w.end_ns - lo
            else:
                stall += np.minimum(faults, w.acquisitions) * (w.hold_ns / 2)
        return stall

    def expire(self, now_ns: float) -> None:
        self.windows = [w for w in self.windows if w.end_ns > now_ns]
