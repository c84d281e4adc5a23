"""Cost tables: `mmu.costs` as a name in configs/costs/, a path, or an inline table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from migrate.config.reader import error, read_toml
from vmmodel import CostTable, SpecError

CONFIGS_DIR = Path(__file__).resolve().parent.parent.parent / "configs"
COSTS_DIR = CONFIGS_DIR / "costs"

def costs_from_toml(value: object) -> CostTable:
    """Return the cost table named by mmu.costs: a name, a path, or an inline table.

    Raise `ConfigError` naming mmu.costs (and the file) for a table that does
    not exist, cannot be read, or has a constant that is unknown or negative.
    """
    if isinstance(value, dict):
        return _cost_table(value, "mmu.costs", default_name="custom")
    if not isinstance(value, str) or not value:
        raise error(f"mmu.costs: {value!r} is not a name, a path or a table")
    path = Path(value)
    if "/" not in value and path.suffix != ".toml":
        path = COSTS_DIR / f"{value}.toml"
        if not path.is_file():
            have = ", ".join(sorted(p.stem for p in COSTS_DIR.glob("*.toml")))
            raise error(f"mmu.costs: {value!r} is not a cost table in {COSTS_DIR} (have: {have})")
    return _cost_table(read_toml(path, "mmu.costs"), f"mmu.costs: {path}", default_name=path.stem)


def _cost_table(data: dict[str, Any], where: str, default_name: str) -> CostTable:
    values: dict[str, Any] = {"name": default_name}
    for name, value in data.items():
        if name == "name":
            if not isinstance(value, str):
                raise error(f"{where}: name {value!r} is not a string")
            values[name] = value
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise error(f"{where}: {name} = {value!r} is not a number of ns >= 0")
        values[name] = float(value)
    try:
        return CostTable.from_dict(values)
    except SpecError as exc:
        raise error(f"{where}: {exc}") from None
