"""A sweep: a base scenario and the axes to vary, expanded into named points.

A sweep file is TOML:

```toml
description = "what the sweep asks"     # optional
base = "../tests/small.toml"            # optional: a scenario, relative to this file;
                                        # without it, the built-in configs/default.toml
[set]                                   # optional: overrides for every point
"guest.workload.kind" = "uniform"       # (keys in --set spelling; a table value merges)

[comparisons.ram]                       # optional: named override sets...
"guest.vga" = false
[comparisons.ram-vga]
"guest.vga" = true

[grid]                                  # optional: ...crossed with a grid (cartesian product)
"mmu.strategy" = ["walk", "rmap", "heuristic"]
"guest.workload.rate" = [1000, 30000]
"link.bandwidth+migration.max-bandwidth" = ["1Gbit/s", "10Gbit/s"]  # keys moving together

[report]                                # optional hints for `precopy report`
x = "guest.workload.rate"               # the x axis of the downtime plot
```

Every point is the base scenario, then `set`, then its comparison's
overrides, then its grid values, applied as `--set` applies them. A point's
name is derived from its values (`ram-rmap-rate30000-bw1Gbit`), so a name
cannot disagree with its parameters, and every point's scenario is loaded
before anything runs.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import shlex
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from migrate.config import ConfigError, Scenario, load_scenario
from migrate.config.reader import read_toml

COMPARISON = "comparison"  # the axis that holds a point's comparison name
SWEEP_KEYS = ("description", "base", "set", "comparisons", "grid", "report")
REPORT_KEYS = ("x",)
LINK = "+"  # joins config keys that one axis sets to the same value

# Short labels for the keys people sweep most; any other key is labelled by
# its last part ("guest.workload.exponent" -> "exponent").
KEY_LABELS = {
    "guest.workload.rate": "rate",
    "guest.workload.working-set": "ws",
    "guest.workload.hot-writes": "hotw",
    "guest.workload.hot-memory": "hotm",
    "guest.memory": "mem",
    "guest.vga-memory": "vgamem",
    "link.bandwidth": "bw",
    "link.latency": "lat",
    "migration.max-bandwidth": "maxbw",
    "migration.downtime-limit": "dl",
    "migration.max-iterations": "iters",
    "migration.max-time": "maxtime",
    "migration.batch-pages": "batch",
    "mmu.max-mmu-pages": "maxsp",
    "mmu.mapped-memory": "mapped",
    "mmu.address-spaces": "as",
}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_BARE_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")


# --- TOML values: how an override travels on a `precopy run --set` command line ------


def toml_value(value: Any) -> str:
    """Return *value* spelled as a TOML value, so `--set key=<it>` reads back *value*.

    Raise `ConfigError` for a value TOML cannot hold (None, an object).
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = (f"{_toml_key(k)} = {toml_value(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    raise ConfigError(f"sweep: {value!r} cannot be written as a TOML value")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY_RE.match(key) else json.dumps(key, ensure_ascii=False)


def _is_plain_string(text: str) -> bool:
    """True when `--set k=<text>` reads *text* as the string itself (not as TOML)."""
    try:
        tomllib.loads(f"value = {text}")
    except tomllib.TOMLDecodeError:
        return "\n" not in text and text == text.strip() and bool(text)
    return False


def set_arg(key: str, value: Any) -> str:
    """Return the `--set` argument that gives *key* the *value*: bare when it can be."""
    if isinstance(value, str) and _is_plain_string(value):
        return f"{key}={value}"
    return f"{key}={toml_value(value)}"


# --- names ----------------------------------------------------------------------------


def key_label(key: str) -> str:
    """The short label of a config key in point names: "bw" for link.bandwidth."""
    first = key.split(LINK)[0]
    return KEY_LABELS.get(first, first.rsplit(".", 1)[-1].replace("-", ""))


def _compact(text: str, *, hyphens: bool = True) -> str:
    text = text.replace("%", "pct").replace("/s", "").replace("µ", "u")
    return re.sub(r"[^A-Za-z0-9.-]" if hyphens else r"[^A-Za-z0-9.]", "", text)


def _number(value: float | int) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def value_label(key: str, value: Any, *, hyphens: bool = True) -> str:
    """Name one axis value: a word stands alone ("rmap"), anything else follows its key's label.

    Examples: ("mmu.strategy", "rmap-noflush") -> "rmap-noflush"; ("guest.workload.rate",
    30000) -> "rate30000"; ("link.bandwidth", "1Gbit/s") -> "bw1Gbit"; ("guest.vga",
    False) -> "novga". *hyphens* False gives the spelling of precopy before names kept
    them ("rmapnoflush"), to recognise a results folder written then.
    """
    label = key_label(key)
    if isinstance(value, bool):
        return label if value else f"no{label}"
    if isinstance(value, int | float):
        return label + _number(value)
    if isinstance(value, str):
        compact = _compact(value, hyphens=hyphens)
        if compact[:1].isalpha():
            return compact
        return label + compact
    if isinstance(value, dict):
        return label + "".join(value_label(k, v, hyphens=hyphens).capitalize()
                               for k, v in value.items())
    if isinstance(value, list | tuple):
        return label + "".join(value_label(label, v, hyphens=hyphens).removeprefix(label)
                               for v in value)
    return label + _compact(str(value), hyphens=hyphens)


# --- the sweep --------------------------------------------------------------------------


@dataclass(frozen=True)
class Axis:
    """One grid axis: config keys (usually one) that take each of `values` together."""

    keys: tuple[str, ...]
    values: tuple[Any, ...]

    @property
    def name(self) -> str:
        return LINK.join(self.keys)

    def to_dict(self) -> dict[str, Any]:
        return {"keys": list(self.keys), "values": list(self.values)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Axis:
        return cls(keys=tuple(data["keys"]), values=tuple(data["values"]))


@dataclass(frozen=True)
class Point:
    """One migration of the sweep: its derived name, its axis values, its overrides."""

    name: str
    params: dict[str, Any]  # axis name -> value; the comparison's name under "comparison"
    overrides: tuple[tuple[str, Any], ...]  # (key, value), applied in order

    @property
    def set_args(self) -> list[str]:
        return [set_arg(key, value) for key, value in self.overrides]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params,
                "overrides": [list(kv) for kv in self.overrides]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Point:
        return cls(name=data["name"], params=dict(data["params"]),
                   overrides=tuple((k, v) for k, v in data["overrides"]))


@dataclass(frozen=True)
class Sweep:
    """A base scenario, overrides for every point, comparisons and grid axes."""

    base: Path | None = None  # None: the built-in default scenario
    description: str = ""
    set: dict[str, Any] = field(default_factory=dict)
    comparisons: dict[str, dict[str, Any]] = field(default_factory=dict)
    grid: tuple[Axis, ...] = ()
    report: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # the sweep file it was read from, for messages

    @property
    def axes(self) -> list[str]:
        """The varied axes in naming order: the comparison first, then the grid's."""
        return ([COMPARISON] if self.comparisons else []) + [a.name for a in self.grid]

    def axis_values(self) -> dict[str, list[Any]]:
        """Each axis's values in the order the sweep gives them."""
        values = {COMPARISON: list(self.comparisons)} if self.comparisons else {}
        values.update({a.name: list(a.values) for a in self.grid})
        return values

    def points(self) -> list[Point]:
        """Expand comparisons x grid into points, in order, with derived names.

        Raise `ConfigError` if two points would have the same name.
        """
        comparisons: list[tuple[str | None, dict[str, Any]]] = (
            list(self.comparisons.items()) or [(None, {})]
        )
        combos = list(itertools.product(*(a.values for a in self.grid)))
        points: list[Point] = []
        seen: dict[str, dict[str, Any]] = {}
        for (comparison, comp_set), combo in itertools.product(comparisons, combos):
            params: dict[str, Any] = {} if comparison is None else {COMPARISON: comparison}
            overrides = [*self.set.items(), *comp_set.items()]
            for axis, value in zip(self.grid, combo, strict=True):
                params[axis.name] = value
                overrides += [(key, value) for key in axis.keys]
            name = self._name(params)
            if name in seen:
                raise ConfigError(
                    f"sweep {self.source}: {seen[name]} and {params} are both named {name!r}; "
                    "give the values distinct spellings"
                )
            seen[name] = params
            points.append(Point(name=name, params=params, overrides=tuple(overrides)))
        return points

    def _name(self, params: dict[str, Any], *, hyphens: bool = True) -> str:
        labels = [params[COMPARISON]] if COMPARISON in params else []
        labels += [value_label(a.name, params[a.name], hyphens=hyphens) for a in self.grid]
        return "-".join(labels) or "base"

    def legacy_name(self, point: Point) -> str:
        """*point*'s name as precopy spelled it before names kept hyphens (`rmapnoflush`)."""
        return self._name(point.params, hyphens=False)

    def scenario(self, point: Point) -> Scenario:
        """Load the point's scenario. Raise `ConfigError` naming the point and the key."""
        try:
            return load_scenario(self.base, point.set_args)
        except ConfigError as err:
            raise ConfigError(f"sweep {self.source}: point {point.name}: {err}") from None

    def validate(self) -> dict[str, Scenario]:
        """Load every point's scenario before anything runs; return them by point name.

        Raise `ConfigError` for the first point that does not load, with how
        many others fail too.
        """
        scenarios: dict[str, Scenario] = {}
        first: ConfigError | None = None
        failed = 0
        for point in self.points():
            try:
                scenarios[point.name] = self.scenario(point)
            except ConfigError as err:
                failed += 1
                first = first or err
        if first is not None:
            more = f" (and {failed - 1} more points fail)" if failed > 1 else ""
            raise ConfigError(f"{first}{more}")
        return scenarios

    def run_command(self, point: Point, *, shown: bool = True) -> list[str]:
        """The `precopy run` arguments for *point* (for display: the base relative to cwd)."""
        base = [] if self.base is None else [_shown_path(self.base) if shown else str(self.base)]
        return [*base, *(arg for s in point.set_args for arg in ("--set", s))]

    def shell_command(self, point: Point) -> str:
        """A command line a person can paste to rerun *point* alone."""
        return shlex.join(["precopy", "run", *self.run_command(point)])

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "description": self.description,
            "base": None if self.base is None else str(self.base),
            "set": self.set,
            "comparisons": self.comparisons,
            "grid": [a.to_dict() for a in self.grid],
            "report": self.report,
            "axes": self.axes,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sweep:
        return cls(
            base=None if data.get("base") is None else Path(data["base"]),
            description=data.get("description", ""),
            set=dict(data.get("set", {})),
            comparisons={k: dict(v) for k, v in data.get("comparisons", {}).items()},
            grid=tuple(Axis.from_dict(a) for a in data.get("grid", [])),
            report=dict(data.get("report", {})),
            source=data.get("source", ""),
        )


def _shown_path(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# --- reading a sweep file ----------------------------------------------------------------


def load_sweep(path: str | Path) -> Sweep:
    """Read a sweep file. Raise `ConfigError` for a file that is unreadable or malformed.

    The points' scenarios are not loaded here; `Sweep.validate()` does that.
    """
    path = Path(path)
    where = f"sweep {path}"
    data = read_toml(path, where="sweep")  # a BOM skipped, bad encodings named, as configs
    return sweep_from_dict(data, where=where, relative_to=path.resolve().parent, source=str(path))


def sweep_from_dict(data: dict[str, Any], *, where: str = "sweep",
                    relative_to: Path | None = None, source: str = "") -> Sweep:
    """Build a Sweep from a sweep file's table. Raise `ConfigError` naming the bad key."""
    _known(data, SWEEP_KEYS, where, "")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{where}: description: {description!r} is not a string")
    base = data.get("base")
    if base is not None:
        if not isinstance(base, str) or not base:
            raise ConfigError(f"{where}: base: {base!r} is not a path")
        base_path = Path(base)
        if not base_path.is_absolute() and relative_to is not None:
            base_path = (relative_to / base_path).resolve()
        if not base_path.is_file():
            raise ConfigError(f"{where}: base: {str(base_path)!r} is not a file")
        base = base_path
    overrides = _table(data.get("set", {}), where, "set")
    comparisons = _comparisons(data.get("comparisons", {}), where)
    grid = _grid(data.get("grid", {}), where)
    report = _table(data.get("report", {}), where, "report")
    _known(report, REPORT_KEYS, where, "report.")
    axes = [a.name for a in grid]
    if "x" in report and report["x"] not in axes:
        raise ConfigError(f"{where}: report.x: {report['x']!r} is not a grid axis "
                          f"(axes: {', '.join(axes) or 'none'})")
    return Sweep(base=base, description=description, set=overrides, comparisons=comparisons,
                 grid=tuple(grid), report=report, source=source or where)


def _known(data: dict[str, Any], keys: Sequence[str], where: str, prefix: str) -> None:
    for key in data:
        if key not in keys:
            raise ConfigError(f"{where}: unknown key {prefix + key!r} "
                              f"(a sweep has: {', '.join(prefix + k for k in keys)})")


def _table(value: Any, where: str, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {name}: expected a table, got {value!r}")
    return dict(value)


def _comparisons(value: Any, where: str) -> dict[str, dict[str, Any]]:
    table = _table(value, where, "comparisons")
    out = {}
    for name, overrides in table.items():
        if not _NAME_RE.match(name):
            raise ConfigError(f"{where}: comparisons.{name}: a comparison's name is letters, "
                              "digits, '.', '_' and '-'")
        out[name] = _table(overrides, where, f"comparisons.{name}")
    return out


def _grid(value: Any, where: str) -> list[Axis]:
    axes = []
    for key, values in _flatten(_table(value, where, "grid"), "", where):
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: grid.{key}: expected a non-empty array of values, "
                              f"got {values!r}")
        keys = tuple(k.strip() for k in key.split(LINK))
        if not all(keys):
            raise ConfigError(f"{where}: grid: {key!r} has an empty key")
        axes.append(Axis(keys=keys, values=tuple(values)))
    names = [k for a in axes for k in a.keys]
    for key in names:
        if names.count(key) > 1:
            raise ConfigError(f"{where}: grid: {key!r} is on more than one axis")
    return axes


def _flatten(table: dict[str, Any], prefix: str, where: str) -> Iterable[tuple[str, Any]]:
    """Dotted keys written as nested tables (`mmu.strategy = [...]`) back to dotted keys."""
    for key, value in table.items():
        if isinstance(value, dict):
            if LINK in key:
                raise ConfigError(f"{where}: grid: {prefix + key!r}: linked keys take an array")
            yield from _flatten(value, f"{prefix}{key}.", where)
        else:
            if prefix and LINK in key:
                raise ConfigError(f"{where}: grid: write linked keys in full at the top of "
                                  f"[grid] ({prefix + key!r})")
            yield prefix + key, value
