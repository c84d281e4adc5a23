"""One declaration per key: its TOML name, how it is spelt and bounded, and what it means.

A parameter is one dataclass field whose metadata is a `Key` (see `key()`);
reading a table, writing it back and checking the values are all derived
from the fields, so adding a parameter is one line, not five edits.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from migrate import units
from migrate.config.reader import Table, error


@dataclass(frozen=True)
class Kind:
    """How a value is read from TOML, written back, and bounded once it is a number."""

    def read(self, t: Table, name: str, default: Any) -> Any:
        # Every kind but one reads itself; `specs.Special` keys are read by hand (their
        # meaning depends on another key), so reaching this is a bug of ours.
        raise NotImplementedError(f"{type(self).__name__} keys such as {name!r} are read by hand")

    def write(self, value: Any) -> Any:
        return value

    def check(self, key: str, value: Any) -> None:
        """Raise `ConfigError` naming *key* if *value* is outside the kind's bounds."""


@dataclass(frozen=True)
class Integer(Kind):
    low: int
    high: int

    def read(self, t: Table, name: str, default: Any) -> int:
        return t.integer(name, default)

    def check(self, key: str, value: Any) -> None:
        if not self.low <= value <= self.high:
            raise error(f"{key}: {value!r} is not in {self.low}..{self.high}")


@dataclass(frozen=True)
class Number(Kind):
    """A finite float in low..high; *open_low* excludes the low end itself."""

    low: float
    high: float
    open_low: bool = False

    def read(self, t: Table, name: str, default: Any) -> float:
        return t.number(name, default)

    def check(self, key: str, value: Any) -> None:
        above = value > self.low if self.open_low else value >= self.low
        if not (math.isfinite(value) and above and value <= self.high):
            low = "(" if self.open_low else "["
            raise error(f"{key}: {value!r} is not in {low}{self.low:g}, {self.high:g}]")


@dataclass(frozen=True)
class Flag(Kind):
    def read(self, t: Table, name: str, default: Any) -> bool:
        return t.flag(name, default)


@dataclass(frozen=True)
class Choice(Kind):
    choices: Sequence[str]

    def read(self, t: Table, name: str, default: Any) -> str:
        return t.choice(name, self.choices, default)

    def check(self, key: str, value: Any) -> None:
        if value not in self.choices:
            raise error(f"{key}: {value!r} is not one of {', '.join(self.choices)}")


@dataclass(frozen=True)
class Version(Choice):
    """A release number from *choices*, written "7.2"; a bare 7.2 (as `--set` reads it) too."""

    def read(self, t: Table, name: str, default: Any) -> str:
        value = t.raw(name, default)
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = repr(value)
        if value not in self.choices:
            raise t.bad(name, value, f"is not one of {', '.join(self.choices)}")
        return value


@dataclass(frozen=True)
class Text(Kind):
    """A non-empty string (a name or a path, checked where it is used)."""

    def read(self, t: Table, name: str, default: Any) -> str:
        value = t.raw(name, default)
        if not isinstance(value, str) or not value:
            raise t.bad(name, value, "is not a non-empty string")
        return value


@dataclass(frozen=True)
class Time(Kind):
    """A duration in ns, written "300ms"; positive unless *low* is 0, at most *high*."""

    low: int = 1
    high: int | None = None

    def read(self, t: Table, name: str, default: Any) -> int:
        return t.unit(name, units.parse_time_ns, default=default)

    def write(self, value: Any) -> str:
        return units.format_ns(value)

    def check(self, key: str, value: Any) -> None:
        if value < self.low:
            why = "is not positive" if self.low == 1 else f"is under {units.format_ns(self.low)}"
            raise error(f"{key}: {units.format_ns(value)} {why}")
        if self.high is not None and value > self.high:
            raise error(f"{key}: {units.format_ns(value)} is not in "
                        f"{units.format_ns(self.low)}..{units.format_ns(self.high)}")


@dataclass(frozen=True)
class Rate(Kind):
    """A rate in bytes per second, written "128MiB/s", at least *low*."""

    low: float

    def read(self, t: Table, name: str, default: Any) -> float:
        return t.unit(name, units.parse_rate, default=default)

    def write(self, value: Any) -> str:
        return units.format_rate(value)

    def check(self, key: str, value: Any) -> None:
        if not value >= self.low:
            raise error(f"{key}: {units.format_rate(value)} is below {units.format_rate(self.low)}")


@dataclass(frozen=True)
class Key:
    """One parameter as the TOML spells it: its name, its kind, and a line for the README."""

    name: str
    kind: Kind
    doc: str


def key(name: str, kind: Kind, default: Any, doc: str) -> Any:
    """Declare a dataclass field that is the TOML key *name*; see `Key`."""
    return dataclasses.field(default=default, metadata={"key": Key(name, kind, doc)})


def keys_of(cls: type) -> tuple[tuple[str, Key], ...]:
    """Return (field name, Key) for every field of *cls* declared with `key()`."""
    fields = dataclasses.fields(cls)
    return tuple((f.name, f.metadata["key"]) for f in fields if "key" in f.metadata)


class Params:
    """A frozen dataclass of `key()` fields under one TOML table, named by `table`.

    Subclasses get bounds checks at construction, `to_dict` in the TOML
    spelling, and `from_dict` that reads it back (a missing key takes the
    field's default).
    """

    table: ClassVar[str]

    def __post_init__(self) -> None:
        for field_name, k in keys_of(type(self)):
            k.kind.check(f"{self.table}.{k.name}", getattr(self, field_name))

    def to_dict(self) -> dict[str, Any]:
        return {k.name: k.kind.write(getattr(self, f)) for f, k in keys_of(type(self))}

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: str | None = None) -> Any:
        """Read the class's table; a missing key takes the field's default."""
        fields = keys_of(cls)
        t = Table(data, path or cls.table, [k.name for _, k in fields])
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        return cls(**{f: k.kind.read(t, k.name, defaults[f]) if t.has(k.name) else defaults[f]
                      for f, k in fields})
