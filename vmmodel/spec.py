"""What a model is built from: plain, frozen parameter objects.

vmmodel takes numbers, not strings: migrate/config/ parses the TOML (sizes,
rates, times with units) and builds these. Each has `to_dict`/`from_dict` so a
report can carry the fully resolved model.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

# The model's units, defined here once (migrate imports them from vmmodel).
PAGE_SIZE = 4096
PAGE_SHIFT = 12
NS_PER_S = 1_000_000_000
# Bounds that keep a run finite on one machine: the guest advances slice by slice.
MIN_SLICE_NS = 10_000
DEFAULT_SLICE_NS = 1_000_000
MAX_WRITE_RATE = 1e9  # writes per second, all vCPUs
MAX_GUEST_PAGES = 1 << 28  # 1 TiB

WORKLOAD_KINDS = ("idle", "uniform", "hotspot", "zipf", "sequential", "vga", "phases", "mix")
MMU_SHAPES = ("tdp", "shadow")
MEMORY_BACKINGS = ("auto", "stored", "generated")  # how the host holds the pages (memory.py)
# How the guest's time is cut (vm.py): from event to event in write-bounded chunks, or in
# fixed slices of `slice_ns` (the reference the event-driven guest is checked against).
GUEST_ADVANCES = ("events", "slices")
# How a workload meets QEMU's vCPU throttle (vm.py): `cpu`, a CPU-bound program (a memset
# loop), writes in proportion to the time it runs; `paced`, a request-driven one, writes at
# its rate while it runs and, woken from a throttle sleep, first catches up the writes it
# owes for the sleep, at most `max_lag_ns` worth.
PACINGS = ("cpu", "paced")
# The reference guest's backlog cap (../shared/reference/qemu-7.2-tcg/README.md: "at most
# 100 ms of backlog", `maxlag_ms`).
DEFAULT_MAX_LAG_NS = 100_000_000
# Longer than any sleep of QEMU's throttle (990 ms at its 99 % cap): a larger lag could
# never be owed.
MAX_LAG_NS = 10 * NS_PER_S


class SpecError(ValueError):
    """A parameter that the model cannot run with; the message names it."""


def _from_dict(cls, data: dict[str, Any]):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise SpecError(f"{cls.__name__}: unknown field(s) {sorted(unknown)}")
    return cls(**data)


@dataclass(frozen=True)
class WorkloadSpec:
    """How the guest writes memory. Rates are writes per second, all vCPUs together."""

    # The value lists and bounds the fields accept, on the class for migrate's config.
    PACINGS: ClassVar[tuple[str, ...]] = PACINGS
    MAX_LAG_NS: ClassVar[int] = MAX_LAG_NS

    kind: str = "hotspot"
    rate: float = 25_000.0
    # How the program meets QEMU's throttle (`PACINGS`); `paced` catches up at most
    # `max_lag_ns` of writes after each throttle sleep. Every part and phase has its own.
    pacing: str = "cpu"
    max_lag_ns: int = DEFAULT_MAX_LAG_NS
    # Pages the workload writes, from the start of its slot; 0 means the whole slot.
    working_set_pages: int = 0
    # Touch (write) the working set before dirty logging starts, as a running program has.
    prefill: bool = True
    # hotspot: `hot_writes` of the writes go to `hot_memory` of the working set.
    hot_writes: float = 0.9
    hot_memory: float = 0.05
    # zipf: P(rank k) ~ 1 / k**exponent over the working set.
    exponent: float = 1.0
    # vga: a framebuffer repainted `region` of the slot per frame, `fps` frames per second.
    fps: float = 30.0
    region: float = 0.25
    # phases: the children run one after another for their `duration_ns`, then repeat.
    duration_ns: int = 0
    phases: tuple[WorkloadSpec, ...] = ()
    # mix: the parts run at the same time (say, a RAM workload beside a display).
    parts: tuple[WorkloadSpec, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in WORKLOAD_KINDS:
            kinds = ", ".join(WORKLOAD_KINDS)
            raise SpecError(f"workload.kind: {self.kind!r} is not one of {kinds}")
        if not (math.isfinite(self.rate) and 0 <= self.rate <= MAX_WRITE_RATE):
            raise SpecError(f"workload.rate: {self.rate} is not in 0..{MAX_WRITE_RATE:.0e}")
        if self.working_set_pages < 0:
            raise SpecError("workload.working-set: negative")
        if self.pacing not in PACINGS:
            raise SpecError(f"workload.pacing: {self.pacing!r} is not one of {', '.join(PACINGS)}")
        if not 0 <= self.max_lag_ns <= MAX_LAG_NS:
            raise SpecError(f"workload.max-lag: {self.max_lag_ns} ns is not in 0..{MAX_LAG_NS} ns")
        for name in ("hot_writes", "hot_memory", "region"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise SpecError(f"workload.{name.replace('_', '-')}: {value} is not in (0, 1]")
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise SpecError(f"workload.fps: {self.fps} must be positive and finite")
        if not (math.isfinite(self.exponent) and self.exponent >= 0):
            raise SpecError(f"workload.exponent: {self.exponent} is not a finite number >= 0"
                            " (zipf: P(rank k) ~ 1/k**exponent)")
        if self.kind in ("phases", "mix") and (self.pacing, self.max_lag_ns) != (
                "cpu", DEFAULT_MAX_LAG_NS):
            what = "phase" if self.kind == "phases" else "part"
            raise SpecError(f"workload.pacing: a {self.kind!r} workload has none of its own; "
                            f"each {what} has its pacing and max-lag")
        if self.kind == "phases":
            if not self.phases:
                raise SpecError("workload.phases: a 'phases' workload needs at least one phase")
            for phase in self.phases:
                if phase.duration_ns <= 0:
                    raise SpecError("workload.phases: every phase needs a positive duration")
                if phase.kind in ("phases", "mix"):
                    raise SpecError("workload.phases: phases do not nest")
        if self.kind == "mix":
            if not self.parts:
                raise SpecError("workload.parts: a 'mix' workload needs at least one part")
            if any(part.kind == "mix" for part in self.parts):
                raise SpecError("workload.parts: mixes do not nest")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["phases"] = [p.to_dict() for p in self.phases]
        data["parts"] = [p.to_dict() for p in self.parts]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkloadSpec:
        data = dict(data)
        data["phases"] = tuple(cls.from_dict(p) for p in data.get("phases", ()))
        data["parts"] = tuple(cls.from_dict(p) for p in data.get("parts", ()))
        return _from_dict(cls, data)


@dataclass(frozen=True)
class GuestSpec:
    """The guest: RAM, an optional VGA framebuffer slot, vCPUs and their workload."""

    memory_pages: int = 262_144  # 1 GiB
    vcpus: int = 4
    vga_pages: int = 0  # 0: no framebuffer slot; QEMU's std VGA has 16 MiB
    # The scheduling quantum (guest processes rotate on the vCPUs each slice; fault debt is
    # repaid at this pace); with advance = "slices", also how far each step goes.
    slice_ns: int = DEFAULT_SLICE_NS
    advance: str = "events"
    workload: WorkloadSpec = field(default_factory=WorkloadSpec)
    # How the host holds the pages: never changes a result, only memory and speed.
    memory_backing: str = "auto"

    def __post_init__(self) -> None:
        if self.memory_backing not in MEMORY_BACKINGS:
            raise SpecError(f"guest.memory-backing: {self.memory_backing!r} is not one of "
                            f"{', '.join(MEMORY_BACKINGS)}")
        if self.advance not in GUEST_ADVANCES:
            raise SpecError(f"guest.advance: {self.advance!r} is not one of "
                            f"{', '.join(GUEST_ADVANCES)}")
        if self.memory_pages < 512:
            raise SpecError(f"guest.memory: {self.memory_pages} pages is less than 2 MiB")
        if self.memory_pages + self.vga_pages > MAX_GUEST_PAGES:
            raise SpecError("guest.memory: more than 1 TiB (the model keeps per-page state)")
        if not 1 <= self.vcpus <= 256:
            raise SpecError(f"guest.vcpus: {self.vcpus} is not in 1..256")
        if self.vga_pages < 0:
            raise SpecError("guest.vga-memory: negative")
        if self.slice_ns < MIN_SLICE_NS:
            raise SpecError(f"guest.slice: {self.slice_ns} ns is under {MIN_SLICE_NS // 1000} us")
        kinds = {self.workload.kind} | {p.kind for p in self.workload.phases + self.workload.parts}
        if "vga" in kinds and not self.vga_pages:
            raise SpecError("guest.workload: a 'vga' workload needs guest.vga = true")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["workload"] = self.workload.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GuestSpec:
        data = dict(data)
        if "workload" in data:
            data["workload"] = WorkloadSpec.from_dict(data["workload"])
        return _from_dict(cls, data)


@dataclass(frozen=True)
class MmuSpec:
    """The KVM MMU: its shape, the dirty-log harvest strategy and its limits."""

    shape: str = "tdp"
    strategy: str = "heuristic"
    # Intel PML (tdp only): KVM clears D bits instead of W bits and the CPU logs each
    # page it dirties into a 512-entry buffer per vCPU (vmmodel/pml.py).
    pml: bool = False
    # KVM's n_max_mmu_pages; 0 means KVM's default, 20 per 1000 guest pages
    # (KVM_PERMILLE_MMU_PAGES in arch/x86/kvm/mmu/mmu.c).
    max_mmu_pages: int = 0
    # Writable translations a vCPU's TLB keeps (Skylake's STLB: 1536 entries).
    tlb_entries: int = 1536
    # shadow shape: guest processes, each with its own page tables mapping
    # `mapped_pages` of RAM; `shared` of those are shared by all processes.
    address_spaces: int = 8
    mapped_pages: int = 16_384
    shared: float = 0.25

    def __post_init__(self) -> None:
        if self.shape not in MMU_SHAPES:
            raise SpecError(f"mmu.shape: {self.shape!r} is not one of {', '.join(MMU_SHAPES)}")
        if self.pml and self.shape != "tdp":
            raise SpecError("mmu.pml: PML logs guest-physical writes through EPT: it needs "
                            "mmu.shape = \"tdp\"")
        if self.max_mmu_pages < 0:
            raise SpecError("mmu.max-mmu-pages: negative")
        if self.tlb_entries < 1:
            raise SpecError("mmu.tlb-entries: must be at least 1")
        if not 1 <= self.address_spaces <= 64:
            raise SpecError(f"mmu.address-spaces: {self.address_spaces} is not in 1..64")
        if self.mapped_pages < 0:
            raise SpecError("mmu.mapped-pages: negative")
        if not 0.0 <= self.shared <= 1.0:
            raise SpecError(f"mmu.shared: {self.shared} is not in [0, 1]")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MmuSpec:
        return _from_dict(cls, data)
