"""[guest], [guest.workload] and [mmu]: vmmodel's specs, read from and written to TOML.

vmmodel takes numbers; the TOML speaks in units. Each spec has one schema
here, a tuple of `SpecKey`s in the order the TOML writes them: the keys a
table allows, the order `to_toml` writes, and the bounds, all come from it.
Keys whose reading depends on another key (a working set is a share of its
slot; vga-memory matters only with vga) have no simple kind and are read by
the code below them, but are still declared once, here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from migrate import units
from migrate.config.costs import costs_from_toml
from migrate.config.reader import ConfigError, Table, error
from migrate.config.schema import Choice, Flag, Integer, Key, Kind, Number, Time
from vmmodel import (
    GUEST_ADVANCES,
    MAX_GUEST_PAGES,
    MAX_WRITE_RATE,
    MEMORY_BACKINGS,
    MIN_SLICE_NS,
    MMU_SHAPES,
    PAGE_SIZE,
    STRATEGIES,
    WORKLOAD_KINDS,
    CostTable,
    GuestSpec,
    MmuSpec,
    SpecError,
    WorkloadSpec,
)

KNOWN_STRATEGIES = tuple(STRATEGIES)
HUGE_PAGE_SIZE = 2 * 1024 * 1024  # guest RAM comes in whole 2 MiB pages

# Ceilings on rate-like keys, checked at load time so a slice stays a slice's worth of work.
MAX_FPS = 1000.0  # no display refreshes faster; the fastest panels sold run at 500 Hz
MAX_ZIPF_EXPONENT = 20.0  # past ~3 all writes hit rank 1 already; 1e308 overflows numpy
MAX_SLICE_NS = 100_000_000  # QEMU's 100 ms bandwidth window: a longer slice would smear it
MAX_TLB_ENTRIES = 65_536  # x86 STLBs hold 1.5-3 K entries; the model keeps a ring per vCPU
MAX_VCPUS = 256


class Special(Kind):
    """A key read by hand because its meaning depends on another key."""


@dataclass(frozen=True)
class SpecKey:
    """One TOML key of a vmmodel spec: the field it fills (None: it steers another)."""

    field: str | None
    key: Key


def _k(field: str | None, name: str, kind: Kind, doc: str) -> SpecKey:
    return SpecKey(field, Key(name, kind, doc))


_FRACTION = Number(0.0, 1.0, open_low=True)

WORKLOAD_SCHEMA: tuple[SpecKey, ...] = (
    _k("kind", "kind", Special(),
       "`idle`, `uniform`, `hotspot`, `zipf`, `sequential`, `vga` (writes the framebuffer; "
       "needs `guest.vga = true`), `phases` (see below), `mix` (see below)"),
    _k("rate", "rate", Number(0.0, MAX_WRITE_RATE),
       "writes per second, all vCPUs together, at most 1e9"),
    _k("pacing", "pacing", Choice(WorkloadSpec.PACINGS),
       "how the program meets auto-converge's throttle: `cpu` (CPU-bound, a memset loop: it "
       "writes in proportion to the time it runs) or `paced` (request-driven: it writes at its "
       "rate while it runs and, woken from each throttle sleep, first the writes it owes for "
       "the sleep); not for `phases` or `mix`, whose phases and parts each have their own "
       "(see [The model](#the-model))"),
    _k("max_lag_ns", "max-lag", Time(low=0, high=WorkloadSpec.MAX_LAG_NS),
       "`paced`: the most backlog it catches up after a sleep, 0 to 10s (the reference "
       "guest's 100ms)"),
    _k("working_set_pages", "working-set", Special(),
       "pages the workload writes, from the start of its slot: a size or a share of the slot "
       "(the framebuffer for `vga`, RAM otherwise)"),
    _k("prefill", "prefill", Flag(),
       "write the working set once before migrating, as a running program has"),
    _k("hot_writes", "hot-writes", _FRACTION,
       "`hotspot`: share of the writes, in (0, 1], that go to..."),
    _k("hot_memory", "hot-memory", _FRACTION,
       "...this share of the working set, in (0, 1]"),
    _k("exponent", "exponent", Number(0.0, MAX_ZIPF_EXPONENT),
       "`zipf`: P(rank k) ~ 1 / k^exponent, exponent in [0, 20]"),
    _k("fps", "fps", Number(0.0, MAX_FPS, open_low=True),
       "`vga`: frames per second, in (0, 1000]; fps x region x the framebuffer's pages "
       "is at most 1e9 writes per second"),
    _k("region", "region", _FRACTION,
       "`vga`: share of the framebuffer repainted per frame, in (0, 1]"),
)
_WRITTEN_UNLESS_DEFAULT = tuple(s for s in WORKLOAD_SCHEMA if s.field in ("pacing", "max_lag_ns"))
_DEFAULT_WORKLOAD = WorkloadSpec()
DURATION_KEY = _k("duration_ns", "duration", Time(), "a phase's run time, required and positive")
PHASES_KEY = _k("phases", "phases", Special(),
             "`phases`: an array of workload tables run one after another, then repeated")
PARTS_KEY = _k("parts", "parts", Special(),
            "`mix`: an array of workload tables run at the same time")

GUEST_SCHEMA: tuple[SpecKey, ...] = (
    _k("memory_pages", "memory", Special(),
       "guest RAM; a multiple of 2 MiB; the model must fit in the host's available memory"),
    _k("vcpus", "vcpus", Integer(1, MAX_VCPUS), "virtual CPUs, 1 to 256"),
    _k(None, "vga", Flag(), "add a framebuffer memory slot"),
    _k("slice_ns", "slice", Time(low=MIN_SLICE_NS, high=MAX_SLICE_NS),
       "the scheduling quantum, 10 us to 100 ms: guest processes rotate on the vCPUs each "
       "slice, and the time faults cost the vCPUs is repaid at this pace; with `advance = "
       "\"slices\"`, also how far each step of the guest goes"),
    _k("advance", "advance", Choice(GUEST_ADVANCES),
       "`events` (from one event that changes the MMU to the next, in chunks of at most "
       "a million writes) or `slices` (fixed steps of `slice`: the reference the first is "
       "checked against); see [How the guest advances](#how-the-guest-advances)"),
    _k("workload", "workload", Special(), "how the guest writes memory (below)"),
    _k("vga_pages", "vga-memory", Special(), "size of the framebuffer slot (whole 4 KiB pages)"),
    _k("memory_backing", "memory-backing", Choice(MEMORY_BACKINGS),
       "how the source holds the pages: `stored` (4 KiB each), `generated` (from each page's "
       "template and write count, 9 B each), `auto` (generated from 1 GiB up); never changes "
       "a result (see [Memory backing](#memory-backing))"),
)

MMU_SCHEMA: tuple[SpecKey, ...] = (
    _k("shape", "shape", Choice(MMU_SHAPES),
       "`tdp` (EPT/NPT) or `shadow` (legacy shadow paging)"),
    _k("strategy", "strategy", Choice(KNOWN_STRATEGIES),
       "dirty-log harvest: `walk`, `rmap`, `heuristic`, `masked`; the deliberately broken "
       "`rmap-noflush`, `protect-before-take`, `masked-noflush` and `pml-full-only` (needs "
       "`pml = true`) exist to show lost writes"),
    _k("pml", "pml", Flag(),
       "`tdp`: Intel PML: KVM clears D bits instead of W bits, and each vCPU logs the pages "
       "it dirties into a 512-entry buffer, with a VM exit when it is full (no write faults); "
       "with every strategy (see [The model](#the-model))"),
    _k(None, "costs", Special(),
       "cost table: a name in `configs/costs/` (`kvm-x86` is `configs/costs/kvm-x86.toml`), "
       "a path to a TOML file (relative to the config file that names it), or an inline "
       "table of constants (one left out takes the model's built-in value); each constant "
       "is bounded (see [Cost constants](#cost-constants))"),
    _k("max_mmu_pages", "max-mmu-pages", Integer(0, MAX_GUEST_PAGES),
       "`shadow`: KVM's `n_max_mmu_pages`; 0 is KVM's default, 20 per 1000 guest pages"),
    _k("tlb_entries", "tlb-entries", Integer(1, MAX_TLB_ENTRIES),
       "writable translations each vCPU's TLB keeps, 1 to 65536"),
    _k("address_spaces", "address-spaces", Integer(1, 64),
       "`shadow`: guest processes, 1 to 64"),
    _k("mapped_pages", "mapped-memory", Special(),
       "`shadow`: memory each process maps, at most `guest.memory`"),
    _k("shared", "shared", Number(0.0, 1.0),
       "`shadow`: share of each process's mappings shared by all, in [0, 1]"),
)


def _names(schema: tuple[SpecKey, ...]) -> tuple[str, ...]:
    return tuple(s.key.name for s in schema)


def _read_simple(t: Table, schema: tuple[SpecKey, ...], defaults: Any) -> dict[str, Any]:
    """Return field -> value for every key of *schema* with a kind, read and bounded."""
    values: dict[str, Any] = {}
    for s in schema:
        if isinstance(s.key.kind, Special) or s.field is None:
            continue
        default = getattr(defaults, s.field)
        value = s.key.kind.read(t, s.key.name, default) if t.has(s.key.name) else default
        s.key.kind.check(t.key(s.key.name), value)
        values[s.field] = value
    return values


def _write_simple(spec: Any, s: SpecKey) -> Any:
    return s.key.kind.write(getattr(spec, s.field))


def _spec_call(path: str, build: Callable[[], Any]) -> Any:
    """Build a vmmodel spec, turning its SpecError into a ConfigError under *path*."""
    try:
        return build()
    except SpecError as exc:
        message = str(exc)
        if message.startswith("workload."):
            message = path + message[len("workload"):]
        raise error(message) from None


# --- workloads ---------------------------------------------------------------------


def _working_set_pages(t: Table, slot_pages: int) -> int:
    """Return the working set in pages: a size, or a share of the slot rounded down."""
    value = t.raw("working-set", "100%")
    size = t.unit("working-set", units.parse_size_or_share, slot_pages * PAGE_SIZE,
                  default="100%")
    is_share = isinstance(value, str) and value.strip().endswith("%")
    if size % PAGE_SIZE and not is_share:
        raise t.bad("working-set", value, "is not a multiple of 4KiB")
    pages = size // PAGE_SIZE
    if not 1 <= pages <= slot_pages:
        slot = units.format_bytes(slot_pages * PAGE_SIZE)
        raise t.bad("working-set", value, f"is not between 4KiB and the slot size ({slot})")
    return pages


# A workload table's role decides its extra keys and the kinds it may have:
# phases run one after another (each with a duration), parts of a mix at once.
_ROLES: dict[str, tuple[tuple[SpecKey, ...], tuple[str, ...]]] = {
    "top": ((*WORKLOAD_SCHEMA, PHASES_KEY, PARTS_KEY), WORKLOAD_KINDS),
    "part": ((*WORKLOAD_SCHEMA, PHASES_KEY), tuple(k for k in WORKLOAD_KINDS if k != "mix")),
    "phase": (
        (*WORKLOAD_SCHEMA, DURATION_KEY),
        tuple(k for k in WORKLOAD_KINDS if k not in ("phases", "mix")),
    ),
}
_CHILDREN = ((PHASES_KEY, "phase", "phases"), (PARTS_KEY, "part", "mix"))  # key, role, kind


def workload_from_toml(
    data: object, path: str, role: str, memory_pages: int, vga_pages: int
) -> WorkloadSpec:
    """Read a workload table: the top one, a part of a mix, or a phase."""
    schema, kinds = _ROLES[role]
    t = Table(data, path, _names(schema))
    d = WorkloadSpec()
    kind = t.choice("kind", kinds, d.kind)
    if kind == "vga" and not vga_pages:
        raise t.bad("kind", kind, "needs guest.vga = true")
    slot_pages = vga_pages if kind == "vga" else memory_pages
    if DURATION_KEY in schema and not t.has("duration"):
        raise error(f"{t.key('duration')}: missing (each phase needs a positive duration)")
    fields = {"kind": kind, **_read_simple(t, schema, d)}
    fields["working_set_pages"] = _working_set_pages(t, slot_pages)
    if kind == "vga":
        writes = fields["fps"] * fields["region"] * slot_pages
        if writes > MAX_WRITE_RATE:
            raise t.bad("fps", fields["fps"], f"repaints {writes:.3g} pages/s, more than "
                        f"{MAX_WRITE_RATE:.0e} writes/s (lower fps, region or guest.vga-memory)")
    for child, child_role, child_kind in _CHILDREN:
        name = child.key.name
        if child not in schema:
            continue
        items = t.raw(name, [])
        if not isinstance(items, list):
            raise t.bad(name, items, "is not an array of tables")
        if items and kind != child_kind:
            raise error(f"{t.key(name)}: only used when kind = {child_kind!r} (kind is {kind!r})")
        fields[child.field] = tuple(
            workload_from_toml(item, f"{t.key(name)}[{i}]", child_role, memory_pages, vga_pages)
            for i, item in enumerate(items)
        )
    return _spec_call(path, lambda: WorkloadSpec(**fields))


def workload_to_toml(w: WorkloadSpec, role: str, memory_pages: int,
                     vga_pages: int) -> dict[str, Any]:
    """Return the workload table in the TOML spelling, in its schema's order."""
    schema = _ROLES[role][0]
    slot_pages = vga_pages if w.kind == "vga" else memory_pages
    whole = w.working_set_pages in (0, slot_pages)
    data: dict[str, Any] = {}
    for s in schema:
        if s is PHASES_KEY or s is PARTS_KEY:
            child_role = "phase" if s is PHASES_KEY else "part"
            data[s.key.name] = [workload_to_toml(c, child_role, memory_pages, vga_pages)
                                for c in getattr(w, s.field)]
        elif s.key.name == "working-set":
            data[s.key.name] = ("100%" if whole
                                else units.format_bytes(w.working_set_pages * PAGE_SIZE))
        elif s in _WRITTEN_UNLESS_DEFAULT:
            # Keys added after many reports were stored: a run that leaves them at their
            # defaults resolves as it did before them (a sweep's stored points still match).
            if getattr(w, s.field) != getattr(_DEFAULT_WORKLOAD, s.field):
                data[s.key.name] = _write_simple(w, s)
        else:
            data[s.key.name] = _write_simple(w, s)
    return data


# --- the guest ---------------------------------------------------------------------


def guest_from_toml(data: object) -> GuestSpec:
    """Read [guest]: RAM, vCPUs, the optional framebuffer slot, the slice and the workload."""
    t = Table(data, "guest", _names(GUEST_SCHEMA))
    d = GuestSpec()
    memory_pages = t.pages("memory", units.parse_size)
    if memory_pages * PAGE_SIZE % HUGE_PAGE_SIZE or not memory_pages:
        raise t.bad("memory", t.raw("memory"), "is not a positive multiple of 2MiB")
    vga_memory_pages = t.pages("vga-memory", units.parse_size)  # checked even while unused
    vga = t.flag("vga", False)
    vga_pages = vga_memory_pages if vga else 0
    if vga and not vga_pages:
        raise t.bad("vga-memory", t.raw("vga-memory"), "is empty but guest.vga = true")
    if memory_pages + vga_pages > MAX_GUEST_PAGES:
        what = "guest.memory + guest.vga-memory" if vga_pages else "guest.memory"
        raise error(f"{what}: {units.format_bytes((memory_pages + vga_pages) * PAGE_SIZE)} "
                    f"is more than {units.format_bytes(MAX_GUEST_PAGES * PAGE_SIZE)} "
                    "(the model keeps per-page state)")
    fields = _read_simple(t, GUEST_SCHEMA, d)
    workload = workload_from_toml(
        t.raw("workload"), "guest.workload", "top", memory_pages, vga_pages
    )
    return _spec_call(
        "guest",
        lambda: GuestSpec(**fields, memory_pages=memory_pages, vga_pages=vga_pages,
                          workload=workload),
    )


def guest_to_toml(g: GuestSpec) -> dict[str, Any]:
    """Return [guest] in the TOML spelling; vga-memory only with a framebuffer, memory-backing
    only when it is not `auto`."""
    data: dict[str, Any] = {}
    for s in GUEST_SCHEMA:
        name = s.key.name
        if name == "memory":
            data[name] = units.format_bytes(g.memory_pages * PAGE_SIZE)
        elif name == "vga":
            data[name] = bool(g.vga_pages)
        elif name == "workload":
            data[name] = workload_to_toml(g.workload, "top", g.memory_pages, g.vga_pages)
        elif name == "vga-memory":
            if g.vga_pages:  # without a framebuffer its size means nothing; default.toml fills it
                data[name] = units.format_bytes(g.vga_pages * PAGE_SIZE)
        elif name == "memory-backing":
            if g.memory_backing != "auto":  # how the host held it, not what was run: no result
                data[name] = g.memory_backing  # depends on it, so reports of auto stay as they were

        else:
            data[name] = _write_simple(g, s)
    return data


# --- the MMU -------------------------------------------------------------------------


def mmu_from_toml(data: object, memory_pages: int) -> tuple[MmuSpec, CostTable]:
    """Read [mmu] for a guest of *memory_pages*: the spec and its cost table.

    Raise `ConfigError` for a shadow MMU whose mmu.mapped-memory is larger
    than the guest's RAM: a guest process cannot map more memory than the
    guest has. (tdp ignores the key, so its default does not bind a small guest.)
    """
    t = Table(data, "mmu", _names(MMU_SCHEMA))
    fields = _read_simple(t, MMU_SCHEMA, MmuSpec())
    mapped_pages = t.pages("mapped-memory", units.parse_size, units.format_bytes(
        MmuSpec().mapped_pages * PAGE_SIZE))
    if fields["shape"] == "shadow" and mapped_pages > memory_pages:
        raise t.bad("mapped-memory", t.raw("mapped-memory"), "is more than guest.memory "
                    f"({units.format_bytes(memory_pages * PAGE_SIZE)})")
    if STRATEGIES[fields["strategy"]].needs_pml and not fields["pml"]:
        raise t.bad("strategy", fields["strategy"], "needs mmu.pml = true")
    mmu = _spec_call("mmu", lambda: MmuSpec(**fields, mapped_pages=mapped_pages))
    return mmu, costs_from_toml(t.raw("costs"))


def mmu_to_toml(m: MmuSpec, costs: CostTable) -> dict[str, Any]:
    """Return [mmu] in the TOML spelling, the cost table inline so it needs no file.

    `pml` only when true, and the cost constants of `masked` and PML only when they are
    not the model's own: keys added after many reports were stored, so that a run
    that leaves them alone resolves as before (a sweep's stored points still match).
    """
    data: dict[str, Any] = {}
    for s in MMU_SCHEMA:
        name = s.key.name
        if name == "costs":
            data[name] = {k: v for k, v in costs.to_dict().items()
                          if k not in _COSTS_WRITTEN_UNLESS_DEFAULT
                          or v != getattr(_DEFAULT_COSTS, k)}
        elif name == "mapped-memory":
            data[name] = units.format_bytes(m.mapped_pages * PAGE_SIZE)
        elif name == "pml":
            if m.pml:
                data[name] = True
        else:
            data[name] = _write_simple(m, s)
    return data


_DEFAULT_COSTS = CostTable()
_COSTS_WRITTEN_UNLESS_DEFAULT = ("word_xchg_ns", "tdp_walk_ns", "spte_clear_ns", "pml_exit_ns",
                                 "pml_entry_ns", "pml_kick_ns")


def spec_fields_without_key() -> dict[str, set[str]]:
    """Return, per spec, the dataclass fields no schema entry fills (a test keeps it empty)."""
    filled = {
        "WorkloadSpec": {s.field for s in (*WORKLOAD_SCHEMA, DURATION_KEY, PHASES_KEY, PARTS_KEY)},
        "GuestSpec": {s.field for s in GUEST_SCHEMA},
        "MmuSpec": {s.field for s in MMU_SCHEMA},
    }
    specs = {"WorkloadSpec": WorkloadSpec, "GuestSpec": GuestSpec, "MmuSpec": MmuSpec}
    return {name: {f.name for f in dataclasses.fields(cls)} - filled[name]
            for name, cls in specs.items()}


__all__ = ["ConfigError", "GUEST_SCHEMA", "HUGE_PAGE_SIZE", "KNOWN_STRATEGIES", "MMU_SCHEMA",
           "WORKLOAD_SCHEMA", "guest_from_toml", "guest_to_toml", "mmu_from_toml",
           "mmu_to_toml", "workload_from_toml", "workload_to_toml"]
