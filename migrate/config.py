"""Scenarios: configs/default.toml, a user's file deep-merged over it, then --set.

The TOML speaks in units ("1GiB", "300ms") and hyphenated keys; the model and
the engine take numbers in named units (memory_pages, downtime_limit_ns). This
module is the one place that converts, and it checks everything on the way:
an unknown key, a wrong type or a bad value is a `ConfigError` whose one-line
message names the key and the value. `Scenario.to_dict()` writes the resolved
scenario back in the TOML spelling, and loading that gives the same Scenario,
so a report carries exactly what ran.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migrate import units, wire
from vmmodel.costs import CostTable
from vmmodel.spec import (
    MMU_SHAPES,
    PAGE_SIZE,
    WORKLOAD_KINDS,
    GuestSpec,
    MmuSpec,
    SpecError,
    WorkloadSpec,
)

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = CONFIGS_DIR / "default.toml"
COSTS_DIR = CONFIGS_DIR / "costs"

KNOWN_STRATEGIES = ("walk", "rmap", "heuristic", "rmap-noflush", "protect-before-take")
CLOCKS = ("virtual", "wall")
NO_CONVERGENCE_POLICIES = ("force", "cancel")
COMPRESSIONS = ("none", "lz4")
MAX_BATCH_PAGES = 4096
HUGE_PAGE_SIZE = 2 * 1024 * 1024  # guest RAM comes in whole 2 MiB pages

_TOP_KEYS = ("seed", "clock", "guest", "mmu", "migration", "link")
_GUEST_KEYS = ("memory", "vcpus", "vga", "vga-memory", "slice", "workload")
_WORKLOAD_KEYS = (
    "kind",
    "rate",
    "working-set",
    "prefill",
    "hot-writes",
    "hot-memory",
    "exponent",
    "fps",
    "region",
)
_MMU_KEYS = (
    "shape",
    "strategy",
    "costs",
    "max-mmu-pages",
    "tlb-entries",
    "address-spaces",
    "mapped-memory",
    "shared",
)
_REQUIRED = object()


class ConfigError(ValueError):
    """A scenario that cannot be loaded; the one-line message names the key and the value."""


class _Table:
    """One TOML table being read: its dotted path for messages, typed getters.

    Raise `ConfigError` at construction if *data* is not a table or has a key
    outside *keys*, so a misspelt key is reported before anything else.
    """

    def __init__(self, data: object, path: str, keys: Sequence[str]) -> None:
        self.path = path
        if not isinstance(data, dict):
            raise ConfigError(f"config: {path}: expected a table, got {data!r}")
        for name in data:
            if name not in keys:
                close = difflib.get_close_matches(name, keys, n=1)
                hint = f" (did you mean {self.key(close[0])!r}?)" if close else ""
                raise ConfigError(f"config: unknown key {self.key(name)!r}{hint}")
        self.data = data

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def raw(self, name: str, default: Any = _REQUIRED) -> Any:
        if name in self.data:
            return self.data[name]
        if default is _REQUIRED:
            raise ConfigError(f"config: missing key {self.key(name)!r}")
        return default

    def bad(self, name: str, value: Any, why: str) -> ConfigError:
        return ConfigError(f"config: {self.key(name)}: {value!r} {why}")

    def integer(self, name: str, default: Any = _REQUIRED, *, low: int | None = None) -> int:
        value = self.raw(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.bad(name, value, "is not an integer")
        if low is not None and value < low:
            raise self.bad(name, value, f"is less than {low}")
        return value

    def number(self, name: str, default: Any = _REQUIRED) -> float:
        value = self.raw(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.bad(name, value, "is not a number")
        return float(value)

    def flag(self, name: str, default: Any = _REQUIRED) -> bool:
        value = self.raw(name, default)
        if not isinstance(value, bool):
            raise self.bad(name, value, "is not true or false")
        return value

    def choice(self, name: str, choices: Sequence[str], default: Any = _REQUIRED) -> str:
        value = self.raw(name, default)
        if value not in choices or not isinstance(value, str):
            raise self.bad(name, value, f"is not one of {', '.join(choices)}")
        return value

    def unit(self, name: str, parse: Callable[..., Any], *args: Any, default: Any = _REQUIRED):
        """Return the value parsed by one of `migrate.units`' parsers."""
        try:
            return parse(self.raw(name, default), *args)
        except ValueError as exc:
            raise ConfigError(f"config: {self.key(name)}: {exc}") from None

    def pages(self, name: str, default: Any = _REQUIRED) -> int:
        """Return a size that must be whole 4 KiB pages, in pages."""
        size = self.unit(name, units.parse_size, default=default)
        if size % PAGE_SIZE:
            raise self.bad(name, self.raw(name, default), "is not a multiple of 4KiB")
        return size // PAGE_SIZE


def _check_range(key: str, value: float, low: float, high: float | None = None) -> None:
    if value < low or (high is not None and value > high):
        allowed = f"in {low}..{high}" if high is not None else f"at least {low}"
        raise ConfigError(f"config: {key}: {value!r} is not {allowed}")


def _check_positive(key: str, value: float, spell: Callable[[Any], str]) -> None:
    if not value > 0:
        raise ConfigError(f"config: {key}: {spell(value)} is not positive")


# Floors and ceilings that keep a run finite: the model advances in slices and sends in
# batches, so a link of a few bytes a second or a day of latency would run for ever.
MIN_BANDWIDTH_BPS = 1000.0
MAX_LATENCY_NS = 10_000_000_000


def _check_bandwidth(key: str, value: float) -> None:
    if not value >= MIN_BANDWIDTH_BPS:
        raise ConfigError(f"config: {key}: {units.format_rate(value)} is below "
                          f"{units.format_rate(MIN_BANDWIDTH_BPS)}")


def _spec_call(path: str, build: Callable[[], Any]) -> Any:
    """Build a vmmodel spec, turning its SpecError into a ConfigError under *path*."""
    try:
        return build()
    except SpecError as exc:
        message = str(exc)
        if message.startswith("workload."):
            message = path + message[len("workload") :]
        raise ConfigError(f"config: {message}") from None


# --- migration and link: this package's own parameters -----------------------


@dataclass(frozen=True)
class MigrationParams:
    """QEMU's migration parameters (defaults are QEMU's) that steer precopy."""

    downtime_limit_ns: int = 300_000_000
    max_bandwidth_bps: float = 128.0 * 1024 * 1024
    max_iterations: int = 30
    max_time_ns: int = 120_000_000_000
    on_no_convergence: str = "force"
    batch_pages: int = 256
    compression: str = "none"
    channels: int = 1
    # QEMU's auto-converge capability and its cpu-throttle parameters (migration/options.c).
    auto_converge: bool = False
    throttle_trigger_threshold: int = 50  # percent of the bytes sent in a period
    cpu_throttle_initial: int = 20
    cpu_throttle_increment: int = 10
    cpu_throttle_max: int = 99

    def __post_init__(self) -> None:
        _check_positive("migration.downtime-limit", self.downtime_limit_ns, units.format_ns)
        _check_bandwidth("migration.max-bandwidth", self.max_bandwidth_bps)
        _check_range("migration.max-iterations", self.max_iterations, 1)
        _check_positive("migration.max-time", self.max_time_ns, units.format_ns)
        if self.on_no_convergence not in NO_CONVERGENCE_POLICIES:
            raise ConfigError(
                f"config: migration.on-no-convergence: {self.on_no_convergence!r} "
                f"is not one of {', '.join(NO_CONVERGENCE_POLICIES)}"
            )
        _check_range("migration.batch-pages", self.batch_pages, 1, MAX_BATCH_PAGES)
        if self.compression not in COMPRESSIONS:
            raise ConfigError(f"config: migration.compression: {self.compression!r} "
                              f"is not one of {', '.join(COMPRESSIONS)}")
        _check_range("migration.channels", self.channels, 1, wire.MAX_CHANNELS)
        _check_range("migration.throttle-trigger-threshold", self.throttle_trigger_threshold,
                     1, 100)
        _check_range("migration.cpu-throttle-initial", self.cpu_throttle_initial, 1, 99)
        _check_range("migration.cpu-throttle-increment", self.cpu_throttle_increment, 1, 99)
        _check_range("migration.cpu-throttle-max", self.cpu_throttle_max, 1, 99)

    def to_dict(self) -> dict[str, Any]:
        return {
            "downtime-limit": units.format_ns(self.downtime_limit_ns),
            "max-bandwidth": units.format_rate(self.max_bandwidth_bps),
            "max-iterations": self.max_iterations,
            "max-time": units.format_ns(self.max_time_ns),
            "on-no-convergence": self.on_no_convergence,
            "batch-pages": self.batch_pages,
            "compression": self.compression,
            "channels": self.channels,
            "auto-converge": self.auto_converge,
            "throttle-trigger-threshold": self.throttle_trigger_threshold,
            "cpu-throttle-initial": self.cpu_throttle_initial,
            "cpu-throttle-increment": self.cpu_throttle_increment,
            "cpu-throttle-max": self.cpu_throttle_max,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: str = "migration") -> MigrationParams:
        """Read a [migration] table; a missing key takes the default."""
        t = _Table(data, path, list(cls().to_dict()))
        d = cls()
        return cls(
            downtime_limit_ns=t.unit(
                "downtime-limit", units.parse_time_ns, default=units.format_ns(d.downtime_limit_ns)
            ),
            max_bandwidth_bps=t.unit(
                "max-bandwidth", units.parse_rate, default=d.max_bandwidth_bps
            ),
            max_iterations=t.integer("max-iterations", d.max_iterations),
            max_time_ns=t.unit(
                "max-time", units.parse_time_ns, default=units.format_ns(d.max_time_ns)
            ),
            on_no_convergence=t.choice(
                "on-no-convergence", NO_CONVERGENCE_POLICIES, d.on_no_convergence
            ),
            batch_pages=t.integer("batch-pages", d.batch_pages),
            compression=t.choice("compression", COMPRESSIONS, d.compression),
            channels=t.integer("channels", d.channels),
            auto_converge=t.flag("auto-converge", d.auto_converge),
            throttle_trigger_threshold=t.integer("throttle-trigger-threshold",
                                                 d.throttle_trigger_threshold),
            cpu_throttle_initial=t.integer("cpu-throttle-initial", d.cpu_throttle_initial),
            cpu_throttle_increment=t.integer("cpu-throttle-increment", d.cpu_throttle_increment),
            cpu_throttle_max=t.integer("cpu-throttle-max", d.cpu_throttle_max),
        )


@dataclass(frozen=True)
class LinkParams:
    """The wire between source and destination: its bandwidth and one-way latency."""

    bandwidth_bps: float = 10e9 / 8
    latency_ns: int = 100_000

    def __post_init__(self) -> None:
        _check_bandwidth("link.bandwidth", self.bandwidth_bps)
        if not 0 <= self.latency_ns <= MAX_LATENCY_NS:
            raise ConfigError(f"config: link.latency: {units.format_ns(self.latency_ns)} is not "
                              f"in 0..{units.format_ns(MAX_LATENCY_NS)}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "bandwidth": units.format_rate(self.bandwidth_bps),
            "latency": units.format_ns(self.latency_ns),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: str = "link") -> LinkParams:
        """Read a [link] table; a missing key takes the default."""
        t = _Table(data, path, ("bandwidth", "latency"))
        d = cls()
        return cls(
            bandwidth_bps=t.unit("bandwidth", units.parse_rate, default=d.bandwidth_bps),
            latency_ns=t.unit(
                "latency", units.parse_time_ns, default=units.format_ns(d.latency_ns)
            ),
        )


# --- guest and mmu: vmmodel's specs, read from and written to TOML spelling ---


def _working_set_pages(t: _Table, slot_pages: int, default: Any) -> int:
    """Return the working set in pages: a size, or a share of the slot rounded down."""
    value = t.raw("working-set", default)
    size = t.unit("working-set", units.parse_size_or_share, slot_pages * PAGE_SIZE, default=default)
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
_ROLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "top": ((*_WORKLOAD_KEYS, "phases", "parts"), WORKLOAD_KINDS),
    "part": ((*_WORKLOAD_KEYS, "phases"), tuple(k for k in WORKLOAD_KINDS if k != "mix")),
    "phase": (
        (*_WORKLOAD_KEYS, "duration"),
        tuple(k for k in WORKLOAD_KINDS if k not in ("phases", "mix")),
    ),
}
_CHILDREN = (("phases", "phase", "phases"), ("parts", "part", "mix"))  # key, role, kind


def _workload_from_toml(
    data: object, path: str, role: str, memory_pages: int, vga_pages: int
) -> WorkloadSpec:
    """Read a workload table: the top one, a part of a mix, or a phase."""
    keys, kinds = _ROLES[role]
    t = _Table(data, path, keys)
    d = WorkloadSpec()
    kind = t.choice("kind", kinds, d.kind)
    if kind == "vga" and not vga_pages:
        raise t.bad("kind", kind, "needs guest.vga = true")
    slot_pages = vga_pages if kind == "vga" else memory_pages
    fields: dict[str, Any] = {
        "kind": kind,
        "rate": t.number("rate", d.rate),
        "working_set_pages": _working_set_pages(t, slot_pages, "100%"),
        "prefill": t.flag("prefill", d.prefill),
        "hot_writes": t.number("hot-writes", d.hot_writes),
        "hot_memory": t.number("hot-memory", d.hot_memory),
        "exponent": t.number("exponent", d.exponent),
        "fps": t.number("fps", d.fps),
        "region": t.number("region", d.region),
    }
    if "duration" in keys:
        fields["duration_ns"] = t.unit("duration", units.parse_time_ns, default="0s")
        if fields["duration_ns"] <= 0:
            raise t.bad("duration", t.raw("duration", None), "is not a positive time")
    for key, child_role, child_kind in _CHILDREN:
        if key not in keys:
            continue
        items = t.raw(key, [])
        if not isinstance(items, list):
            raise t.bad(key, items, "is not an array of tables")
        if items and kind != child_kind:
            raise ConfigError(
                f"config: {t.key(key)}: only used when kind = {child_kind!r} (kind is {kind!r})"
            )
        fields[key] = tuple(
            _workload_from_toml(item, f"{t.key(key)}[{i}]", child_role, memory_pages, vga_pages)
            for i, item in enumerate(items)
        )
    return _spec_call(path, lambda: WorkloadSpec(**fields))


def _workload_to_toml(
    w: WorkloadSpec, role: str, memory_pages: int, vga_pages: int
) -> dict[str, Any]:
    keys = _ROLES[role][0]
    slot_pages = vga_pages if w.kind == "vga" else memory_pages
    whole = w.working_set_pages in (0, slot_pages)
    data: dict[str, Any] = {
        "kind": w.kind,
        "rate": w.rate,
        "working-set": "100%" if whole else units.format_bytes(w.working_set_pages * PAGE_SIZE),
        "prefill": w.prefill,
        "hot-writes": w.hot_writes,
        "hot-memory": w.hot_memory,
        "exponent": w.exponent,
        "fps": w.fps,
        "region": w.region,
    }
    if "duration" in keys:
        data["duration"] = units.format_ns(w.duration_ns)
    for key, child_role, _ in _CHILDREN:
        if key in keys:
            children = getattr(w, key)
            data[key] = [
                _workload_to_toml(c, child_role, memory_pages, vga_pages) for c in children
            ]
    return data


def _guest_from_toml(data: object) -> GuestSpec:
    t = _Table(data, "guest", _GUEST_KEYS)
    memory_pages = t.pages("memory")
    if memory_pages * PAGE_SIZE % HUGE_PAGE_SIZE or not memory_pages:
        raise t.bad("memory", t.raw("memory"), "is not a positive multiple of 2MiB")
    vga_memory_pages = t.pages("vga-memory")  # checked even while unused
    vga_pages = vga_memory_pages if t.flag("vga") else 0
    if t.flag("vga") and not vga_pages:
        raise t.bad("vga-memory", t.raw("vga-memory"), "is empty but guest.vga = true")
    slice_ns = t.unit("slice", units.parse_time_ns)
    if slice_ns <= 0:
        raise t.bad("slice", t.raw("slice"), "is not a positive time")
    workload = _workload_from_toml(
        t.raw("workload"), "guest.workload", "top", memory_pages, vga_pages
    )
    return _spec_call(
        "guest",
        lambda: GuestSpec(
            memory_pages=memory_pages,
            vcpus=t.integer("vcpus"),
            vga_pages=vga_pages,
            slice_ns=slice_ns,
            workload=workload,
        ),
    )


def _guest_to_toml(g: GuestSpec) -> dict[str, Any]:
    data: dict[str, Any] = {
        "memory": units.format_bytes(g.memory_pages * PAGE_SIZE),
        "vcpus": g.vcpus,
        "vga": bool(g.vga_pages),
        "slice": units.format_ns(g.slice_ns),
        "workload": _workload_to_toml(g.workload, "top", g.memory_pages, g.vga_pages),
    }
    if g.vga_pages:  # without a framebuffer its size means nothing; default.toml fills it
        data["vga-memory"] = units.format_bytes(g.vga_pages * PAGE_SIZE)
    return data


def _mmu_from_toml(data: object) -> tuple[MmuSpec, CostTable]:
    t = _Table(data, "mmu", _MMU_KEYS)
    mmu = _spec_call(
        "mmu",
        lambda: MmuSpec(
            shape=t.choice("shape", MMU_SHAPES),
            strategy=t.choice("strategy", KNOWN_STRATEGIES),
            max_mmu_pages=t.integer("max-mmu-pages", low=0),
            tlb_entries=t.integer("tlb-entries", low=1),
            address_spaces=t.integer("address-spaces"),
            mapped_pages=t.pages("mapped-memory"),
            shared=t.number("shared"),
        ),
    )
    return mmu, _costs_from_toml(t.raw("costs"))


def _mmu_to_toml(m: MmuSpec, costs: CostTable) -> dict[str, Any]:
    return {
        "shape": m.shape,
        "strategy": m.strategy,
        "costs": costs.to_dict(),  # inline, so the resolved scenario needs no file
        "max-mmu-pages": m.max_mmu_pages,
        "tlb-entries": m.tlb_entries,
        "address-spaces": m.address_spaces,
        "mapped-memory": units.format_bytes(m.mapped_pages * PAGE_SIZE),
        "shared": m.shared,
    }


# --- cost tables ---------------------------------------------------------------


def _costs_from_toml(value: object) -> CostTable:
    """Return the cost table named by mmu.costs: a name, a path, or an inline table."""
    if isinstance(value, dict):
        return _cost_table(value, "mmu.costs", default_name="custom")
    if not isinstance(value, str) or not value:
        raise ConfigError(f"config: mmu.costs: {value!r} is not a name, a path or a table")
    path = Path(value)
    if "/" not in value and path.suffix != ".toml":
        path = COSTS_DIR / f"{value}.toml"
        if not path.is_file():
            have = ", ".join(sorted(p.stem for p in COSTS_DIR.glob("*.toml")))
            raise ConfigError(
                f"config: mmu.costs: {value!r} is not a cost table in {COSTS_DIR} (have: {have})"
            )
    return _cost_table(_read_toml(path, "mmu.costs"), f"mmu.costs: {path}", default_name=path.stem)


def _cost_table(data: dict[str, Any], where: str, default_name: str) -> CostTable:
    values: dict[str, Any] = {"name": default_name}
    for name, value in data.items():
        if name == "name":
            if not isinstance(value, str):
                raise ConfigError(f"config: {where}: name {value!r} is not a string")
            values[name] = value
        elif isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise ConfigError(f"config: {where}: {name} = {value!r} is not a number of ns >= 0")
        else:
            values[name] = float(value)
    try:
        return CostTable.from_dict(values)
    except SpecError as exc:
        raise ConfigError(f"config: {where}: {exc}") from None


# --- the scenario ---------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """Everything one migration run is built from, fully resolved."""

    seed: int
    clock: str
    guest: GuestSpec
    mmu: MmuSpec
    costs: CostTable
    migration: MigrationParams
    link: LinkParams

    def to_dict(self) -> dict[str, Any]:
        """Return the scenario in the TOML spelling; `scenario_from_dict` reads it back."""
        return {
            "seed": self.seed,
            "clock": self.clock,
            "guest": _guest_to_toml(self.guest),
            "mmu": _mmu_to_toml(self.mmu, self.costs),
            "migration": self.migration.to_dict(),
            "link": self.link.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scenario:
        return scenario_from_dict(data)

    def with_overrides(self, overrides: Sequence[str]) -> Scenario:
        """Return this scenario with `--set`-style *overrides* applied.

        They apply to `to_dict()`, where a working set is "100%" when it is the
        whole slot and a size otherwise, so a share such as "50%" stays the
        size it resolved to when guest.memory changes.
        """
        return scenario_from_dict(self.to_dict(), overrides)


def _scenario_from_toml(data: dict[str, Any]) -> Scenario:
    t = _Table(data, "", _TOP_KEYS)
    seed = t.integer("seed", low=0)
    clock = t.choice("clock", CLOCKS)
    guest = _guest_from_toml(t.raw("guest"))
    mmu, costs = _mmu_from_toml(t.raw("mmu"))
    return Scenario(
        seed=seed,
        clock=clock,
        guest=guest,
        mmu=mmu,
        costs=costs,
        migration=MigrationParams.from_dict(t.raw("migration")),
        link=LinkParams.from_dict(t.raw("link")),
    )


# --- loading: files, merging, --set ------------------------------------------------


def _read_toml(path: Path, what: str = "config") -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"config: {what}: cannot read {str(path)!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config: {what}: {path}: {exc}") from None


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Return *over* deep-merged onto *base*: tables merge, anything else replaces."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _parse_value(text: str) -> Any:
    """Return *text* as a TOML value (50000, true, [..]); otherwise as the string itself."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(data: dict[str, Any], override: str) -> dict[str, Any]:
    """Return *data* with one `section.key=value` override merged in.

    Raise `ConfigError` if *override* has no `=` or an empty key part, or if
    its path runs through a value that is not a table.
    """
    key, sep, text = override.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ConfigError(f"config: --set {override!r}: expected section.key=value")
    node = data
    for i, part in enumerate(parts[:-1]):
        node = node.get(part, {})
        if not isinstance(node, dict):
            where = ".".join(parts[: i + 1])
            raise ConfigError(f"config: --set {key.strip()}: {where!r} is not a table")
    update: dict[str, Any] = {parts[-1]: _parse_value(text.strip())}
    for part in reversed(parts[:-1]):
        update = {part: update}
    return _merge(data, update)


def scenario_from_dict(data: dict[str, Any], overrides: Sequence[str] = ()) -> Scenario:
    """Build a Scenario from *data* (TOML spelling) merged over default.toml, then *overrides*.

    Raise `ConfigError` naming the key for an unknown key, a wrong type or a
    bad value.
    """
    merged = _merge(_read_toml(DEFAULT_CONFIG), data)
    for override in overrides:
        merged = apply_override(merged, override)
    return _scenario_from_toml(merged)


def load_scenario(path: str | Path | None, overrides: Sequence[str] = ()) -> Scenario:
    """Load configs/default.toml, the file at *path* over it (None: none), then *overrides*.

    A relative mmu.costs path in the file is taken relative to the file.
    Raise `ConfigError` if a file cannot be read or parsed, or as
    `scenario_from_dict` does.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        data = _read_toml(path)
        mmu = data.get("mmu")
        costs = mmu.get("costs") if isinstance(mmu, dict) else None
        if isinstance(costs, str) and ("/" in costs or costs.endswith(".toml")):
            mmu["costs"] = str(path.parent / costs)  # an absolute path stays as it is
    return scenario_from_dict(data, overrides)
