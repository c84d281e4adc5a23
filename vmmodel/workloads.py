"""Vectorised write generators: which gfns the guest writes in a slice of time.

Each workload turns (time, slice length, how active the vCPUs were) into an
array of gfns, one per write, with numpy; nothing loops per write. `activity`
is the vCPUs' mean share of the slice spent running guest code (1.0 unless
throttled, faulting or stalled on mmu_lock, never more), so a throttle slows
every kind. A `paced` workload also catches up after each throttle sleep: `owed`
gives the writes it owes for the sleeps that ended in a slice, apart from the
slice's own, since each part of a mix and each phase has its own pacing and lag.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from itertools import chain

import numpy as np

from vmmodel.memory import MemSlot
from vmmodel.spec import DEFAULT_SLICE_NS, MAX_WRITE_RATE, NS_PER_S, WorkloadSpec

# The ceiling on the writes one slice generates (so on its gfn array), whatever the rate,
# fps or slice length. It never binds at the spec's highest rate with the default slice:
MIN_SLICE_WRITE_CEILING = int(MAX_WRITE_RATE * DEFAULT_SLICE_NS / NS_PER_S)  # 1e6: 8 MB
# Past that, 16 writes per page of the working set. A slice stamps each page once and
# faults each spte at most once per vCPU, and at this density a uniform slice has written
# all but 1e-7 of the working set (e**-16): more writes could move little but the `writes`
# counter. 128 bytes per page is a small multiple of the model's own per-page state.
MAX_WRITES_PER_PAGE_PER_SLICE = 16
# The most writes one array of a catch-up holds: the catch-up is not cut at a slice's ceiling
# (a paced guest owes every write of its lag), so it comes in arrays of this bound.
OWED_PIECE_WRITES = MIN_SLICE_WRITE_CEILING


def slice_write_ceiling(pages: int) -> int:
    """The most writes one slice over a working set of `pages` generates."""
    return max(MIN_SLICE_WRITE_CEILING, MAX_WRITES_PER_PAGE_PER_SLICE * pages)


class Workload(ABC):
    """Base: a working set in one slot, and for most kinds a rate in writes per second."""

    def __init__(self, spec: WorkloadSpec, slot: MemSlot) -> None:
        self.spec = spec
        self.base = slot.base_gfn
        self.pages = min(spec.working_set_pages or slot.npages, slot.npages)

    def prefill_gfns(self) -> np.ndarray:
        """The pages this workload touches before migration (none if its `prefill` is off)."""
        if not self.spec.prefill:
            return np.empty(0, dtype=np.int64)
        return np.arange(self.base, self.base + self.pages, dtype=np.int64)

    @abstractmethod
    def generate(self, rng: np.random.Generator, t_ns: float, dt_ns: float,
                 activity: float) -> np.ndarray:
        """The gfns written in [t_ns, t_ns + dt_ns), one entry per write."""

    def writes_per_s(self, t_ns: float) -> float:
        """How many writes a second the workload makes at `t_ns`, at full activity.

        What the event-driven guest cuts a stretch into chunks by (vm.py), so that a
        chunk's gfn array stays bounded; not a result.
        """
        return 0.0

    def next_change_ns(self, t_ns: float) -> float:
        """The first time after `t_ns` at which the workload's behaviour changes (a phase
        boundary): an event the guest must not generate across. `inf`: never."""
        return math.inf

    def owed(self, rng: np.random.Generator, wake_ns: float, sleep_ns: float,
             wakes: int) -> Iterator[np.ndarray]:
        """The writes owed on waking from `wakes` throttle sleeps of `sleep_ns` each, the
        last ending at `wake_ns`, in arrays of at most `OWED_PIECE_WRITES` gfns.

        A `paced` workload owes what it would have written in the last
        `min(sleep_ns, max_lag_ns)` of each sleep, and writes it first on waking; a `cpu`
        one owes nothing (it only runs slower). Nothing is drawn from `rng` when nothing
        is owed.
        """
        if self.spec.pacing != "paced" or wakes <= 0:
            return iter(())
        lag_ns = min(float(sleep_ns), float(self.spec.max_lag_ns))
        if lag_ns <= 0:
            return iter(())
        return self._owed(rng, wake_ns, lag_ns, wakes)

    def _owed(self, rng: np.random.Generator, wake_ns: float, lag_ns: float,
              wakes: int) -> Iterator[np.ndarray]:
        """The writes of `wakes` lags of `lag_ns`, the last ending at `wake_ns`."""
        return iter(())


class RateWorkload(Workload):
    """`rate` writes per second, placed by `_pick`."""

    _carry = 0.0  # the fraction of a write due, carried to the next slice

    def _count(self, dt_ns: float, activity: float) -> int:
        """Writes due in this slice; the fraction carries over, so no rate is rounded away.

        At most `slice_write_ceiling`: writes past it are dropped, not carried (a slice
        could hardly show them).
        """
        due = self.spec.rate * dt_ns / NS_PER_S * activity + self._carry
        n = int(due)
        self._carry = due - n
        return min(n, slice_write_ceiling(self.pages))

    def generate(self, rng, t_ns, dt_ns, activity) -> np.ndarray:
        return self._pick(rng, t_ns, self._count(dt_ns, activity))

    def writes_per_s(self, t_ns: float) -> float:
        return self.spec.rate

    def _owed(self, rng, wake_ns, lag_ns, wakes) -> Iterator[np.ndarray]:
        # Every owed write, in pieces: `rate` over each lag, the fraction carried as a
        # slice's is.
        due = self.spec.rate * lag_ns * wakes / NS_PER_S + self._carry
        n = int(due)
        self._carry = due - n
        while n > 0:
            piece = min(n, OWED_PIECE_WRITES)
            yield self._pick(rng, wake_ns - lag_ns, piece)
            n -= piece

    @abstractmethod
    def _pick(self, rng: np.random.Generator, t_ns: float, n: int) -> np.ndarray:
        """`n` gfns to write."""


class Idle(Workload):
    """No writes; with `prefill`, a guest that filled its working set and went quiet."""

    def generate(self, rng, t_ns, dt_ns, activity) -> np.ndarray:
        return np.empty(0, dtype=np.int64)


class Uniform(RateWorkload):
    def _pick(self, rng, t_ns, n) -> np.ndarray:
        return rng.integers(self.base, self.base + self.pages, n, dtype=np.int64)


class Hotspot(RateWorkload):
    """`hot_writes` of the writes land in the first `hot_memory` of the working set."""

    def __init__(self, spec: WorkloadSpec, slot: MemSlot) -> None:
        super().__init__(spec, slot)
        self.hot_pages = max(1, int(round(spec.hot_memory * self.pages)))

    def _pick(self, rng, t_ns, n) -> np.ndarray:
        n_hot = int(rng.binomial(n, self.spec.hot_writes)) if n else 0
        out = rng.integers(self.base, self.base + self.pages, n, dtype=np.int64)
        # Spread the hot writes evenly through the slice: every vCPU gets its share of both.
        hot_at = np.arange(n_hot, dtype=np.int64) * n // max(n_hot, 1)
        out[hot_at] = rng.integers(self.base, self.base + self.hot_pages, n_hot, dtype=np.int64)
        return out


class Zipf(RateWorkload):
    """P(rank k) ~ 1/k^s; ranks are scattered over the working set by a fixed permutation."""

    def __init__(self, spec: WorkloadSpec, slot: MemSlot, rng: np.random.Generator) -> None:
        super().__init__(spec, slot)
        # A huge exponent overflows k**s to inf for k >= 2: weight 0, all writes on rank 1,
        # which is what the exponent asks for; not worth a warning on the user's terminal.
        with np.errstate(over="ignore"):
            weights = 1.0 / np.arange(1, self.pages + 1, dtype=np.float64) ** spec.exponent
        self.cdf = np.cumsum(weights)
        self.cdf /= self.cdf[-1]
        self.rank_to_gfn = self.base + rng.permutation(self.pages).astype(np.int64)

    def _pick(self, rng, t_ns, n) -> np.ndarray:
        ranks = np.searchsorted(self.cdf, rng.random(n))
        return self.rank_to_gfn[np.minimum(ranks, self.pages - 1)]


class Sequential(RateWorkload):
    """A memset-like sweep over the working set at `rate` pages per second."""

    def __init__(self, spec: WorkloadSpec, slot: MemSlot) -> None:
        super().__init__(spec, slot)
        self.position = 0

    def _pick(self, rng, t_ns, n) -> np.ndarray:
        out = self.base + (self.position + np.arange(n, dtype=np.int64)) % self.pages
        self.position = (self.position + n) % self.pages
        return out


class Vga(Workload):
    """A display: every 1/fps s one region (a `region` share of the framebuffer) is repainted.

    Frames repaint the regions in turn. `rate` is not used: fps and region set it.
    A slice runs at most `slice_write_ceiling` writes' worth of frames, its last ones: past
    `regions` frames, the earlier ones write no page that those do not.
    """

    def __init__(self, spec: WorkloadSpec, slot: MemSlot) -> None:
        super().__init__(spec, slot)
        self.region_pages = max(1, int(round(spec.region * self.pages)))
        self.regions = max(1, self.pages // self.region_pages)
        self.max_frames = max(self.regions, slice_write_ceiling(self.pages) // self.region_pages)

    def generate(self, rng, t_ns, dt_ns, activity) -> np.ndarray:
        return self._paint(t_ns, dt_ns, int(self.region_pages * min(activity, 1.0)))

    def _owed(self, rng, wake_ns, lag_ns, wakes) -> Iterator[np.ndarray]:
        # The frames due in the lag before the wake, repainted whole; over several sleeps
        # in one slice, as many frames as their lags hold, the last ones before the wake.
        span = lag_ns * wakes
        yield self._paint(wake_ns - span, span, self.region_pages)

    def _paint(self, t_ns: float, dt_ns: float, painted: int) -> np.ndarray:
        """The frames due in (t_ns, t_ns + dt_ns], `painted` pages of each frame's region."""
        try:
            first = math.floor(t_ns * self.spec.fps / NS_PER_S)
            last = math.floor((t_ns + dt_ns) * self.spec.fps / NS_PER_S)
        except OverflowError:  # t * fps past the float range: the slice repaints it all
            first, last = 0, self.max_frames
        # Python ints: a huge fps gives frame numbers past int64, the region number does not.
        lo = max(first, last - self.max_frames) + 1
        frames = lo % self.regions + np.arange(last + 1 - lo, dtype=np.int64)
        starts = (frames % self.regions) * self.region_pages
        return (self.base + starts[:, None] + np.arange(painted)).ravel()

    def writes_per_s(self, t_ns: float) -> float:
        return self.spec.fps * self.region_pages


class Phases(Workload):
    """The children in turn, each for its duration, repeating."""

    def __init__(self, spec: WorkloadSpec, children: list[Workload]) -> None:
        self.spec = spec
        self.children = children
        self.ends = np.cumsum([c.spec.duration_ns for c in children])

    def current(self, t_ns: float) -> Workload:
        index = int(np.searchsorted(self.ends, t_ns % self.ends[-1], side="right"))
        return self.children[min(index, len(self.children) - 1)]

    def generate(self, rng, t_ns, dt_ns, activity) -> np.ndarray:
        return self.current(t_ns).generate(rng, t_ns, dt_ns, activity)

    def writes_per_s(self, t_ns: float) -> float:
        return self.current(t_ns).writes_per_s(t_ns)

    def owed(self, rng, wake_ns, sleep_ns, wakes) -> Iterator[np.ndarray]:
        # The phase running at the wake catches up, with its own pacing (no slice crosses a
        # phase change; its lag may reach back into the phase before).
        return self.current(wake_ns).owed(rng, wake_ns, sleep_ns, wakes)

    def next_change_ns(self, t_ns: float) -> float:
        pos = t_ns % float(self.ends[-1])
        index = min(int(np.searchsorted(self.ends, pos, side="right")), len(self.ends) - 1)
        boundary = t_ns - pos + float(self.ends[index])  # the current phase's end
        return min(boundary, self.current(t_ns).next_change_ns(t_ns))

    def prefill_gfns(self) -> np.ndarray:
        if not self.spec.prefill:
            return np.empty(0, dtype=np.int64)
        return np.unique(np.concatenate([c.prefill_gfns() for c in self.children]))


class Mix(Workload):
    """The parts at the same time, e.g. a RAM workload beside a repainting display."""

    def __init__(self, spec: WorkloadSpec, parts: list[Workload]) -> None:
        self.spec = spec
        self.parts = parts

    def generate(self, rng, t_ns, dt_ns, activity) -> np.ndarray:
        return np.concatenate([p.generate(rng, t_ns, dt_ns, activity) for p in self.parts])

    def writes_per_s(self, t_ns: float) -> float:
        return sum(p.writes_per_s(t_ns) for p in self.parts)

    def owed(self, rng, wake_ns, sleep_ns, wakes) -> Iterator[np.ndarray]:
        return chain.from_iterable(p.owed(rng, wake_ns, sleep_ns, wakes) for p in self.parts)

    def next_change_ns(self, t_ns: float) -> float:
        return min(p.next_change_ns(t_ns) for p in self.parts)

    def prefill_gfns(self) -> np.ndarray:
        if not self.spec.prefill:
            return np.empty(0, dtype=np.int64)
        return np.unique(np.concatenate([p.prefill_gfns() for p in self.parts]))


def make_workload(spec: WorkloadSpec, ram: MemSlot, vga: MemSlot | None,
                  rng: np.random.Generator) -> Workload:
    """Build the generator for `spec`; `vga` writes the framebuffer slot, the rest RAM."""
    if spec.kind == "phases":
        return Phases(spec, [make_workload(p, ram, vga, rng) for p in spec.phases])
    if spec.kind == "mix":
        return Mix(spec, [make_workload(p, ram, vga, rng) for p in spec.parts])
    if spec.kind == "vga":
        if vga is None:
            raise ValueError("the vga workload needs a framebuffer slot (guest.vga = true)")
        return Vga(spec, vga)
    simple = {"idle": Idle, "uniform": Uniform, "hotspot": Hotspot, "sequential": Sequential}
    if spec.kind == "zipf":
        return Zipf(spec, ram, rng)
    return simple[spec.kind](spec, ram)
