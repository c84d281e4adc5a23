"""The scenario: configs/default.toml, a user's file deep-merged over it, then --set.

`Scenario.to_dict()` writes the resolved scenario back in the TOML spelling,
and loading that gives the same Scenario, so a report carries exactly what ran.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migrate.config.costs import CONFIGS_DIR, QemuCosts, qemu_costs_from_toml
from migrate.config.host import available_memory_bytes, check_host_memory
from migrate.config.params import LinkParams, MigrationParams
from migrate.config.reader import Table, error, read_toml
from migrate.config.specs import guest_from_toml, guest_to_toml, mmu_from_toml, mmu_to_toml
from vmmodel import CostTable, GuestSpec, MmuSpec

DEFAULT_CONFIG = CONFIGS_DIR / "default.toml"
CLOCKS = ("virtual", "wall")


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
    qemu_costs: QemuCosts = QemuCosts()  # read from migration.costs

    def to_dict(self) -> dict[str, Any]:
        """Return the scenario in the TOML spelling; `scenario_from_dict` reads it back."""
        return {
            "seed": self.seed,
            "clock": self.clock,
            "guest": guest_to_toml(self.guest),
            "mmu": mmu_to_toml(self.mmu, self.costs),
            "migration": self.migration.to_dict(),
            "link": self.link.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scenario:
        return scenario_from_dict(data)


# costs: in [mmu]; qemu_costs: migration.costs
_TOP_KEYS = tuple(f for f in Scenario.__dataclass_fields__ if f not in ("costs", "qemu_costs"))


def _scenario_from_toml(data: dict[str, Any]) -> Scenario:
    t = Table(data, "", _TOP_KEYS)
    seed = t.integer("seed")
    if seed < 0:
        raise t.bad("seed", seed, "is negative")
    clock = t.choice("clock", CLOCKS)
    guest = guest_from_toml(t.raw("guest"))
    mmu, costs = mmu_from_toml(t.raw("mmu"), guest.memory_pages)
    migration = MigrationParams.from_dict(t.raw("migration"))
    return Scenario(
        seed=seed,
        clock=clock,
        guest=guest,
        mmu=mmu,
        costs=costs,
        migration=migration,
        link=LinkParams.from_dict(t.raw("link")),
        qemu_costs=qemu_costs_from_toml(migration.costs),
    )


# --- merging and --set -------------------------------------------------------------


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
        raise error(f"--set {override!r}: expected section.key=value")
    node = data
    for i, part in enumerate(parts[:-1]):
        node = node.get(part, {})
        if not isinstance(node, dict):
            where = ".".join(parts[: i + 1])
            raise error(f"--set {key.strip()}: {where!r} is not a table")
    update: dict[str, Any] = {parts[-1]: _parse_value(text.strip())}
    for part in reversed(parts[:-1]):
        update = {part: update}
    return _merge(data, update)


# --- loading -----------------------------------------------------------------------


def scenario_from_dict(data: dict[str, Any], overrides: Sequence[str] = ()) -> Scenario:
    """Build a Scenario from *data* (TOML spelling) merged over default.toml, then *overrides*.

    Raise `ConfigError` naming the key for an unknown key, a wrong type or a
    bad value.
    """
    merged = _merge(read_toml(DEFAULT_CONFIG), data)
    for override in overrides:
        merged = apply_override(merged, override)
    return _scenario_from_toml(merged)


def load_scenario(path: str | Path | None, overrides: Sequence[str] = ()) -> Scenario:
    """Load configs/default.toml, the file at *path* over it (None: none), then *overrides*.

    A relative mmu.costs path in the file is taken relative to the file. This
    is the scenario about to run, so it must fit this host's memory. Raise
    `ConfigError` if a file cannot be read or parsed, if the model would not
    fit (naming guest.memory), or as `scenario_from_dict` does.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        data = read_toml(path)
        for table in ("mmu", "migration"):  # mmu.costs (KVM's), migration.costs (QEMU's)
            section = data.get(table)
            costs = section.get("costs") if isinstance(section, dict) else None
            if isinstance(costs, str) and ("/" in costs or costs.endswith(".toml")):
                section["costs"] = str(path.parent / costs)  # an absolute path stays as it is
    scenario = scenario_from_dict(data, overrides)
    reason = check_host_memory(scenario.guest, scenario.mmu, available_memory_bytes())
    if reason:
        raise error(reason)
    return scenario
