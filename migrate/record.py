"""Dataclasses to plain dicts in QEMU's spelling and back, built from `dataclasses.fields`.

The functions work on any dataclass, so vmmodel's own records (`HarvestResult`,
`GuestStats`) serialise without vmmodel importing migrate: a field says how it
is reported in plain field metadata, declared once next to the field.

- `"key"`: the dict key; default, the name with hyphens (`nr_dirty_pages` ->
  `nr-dirty-pages`). QEMU's spellings appear only here.
- `"skip": True`: not part of the record (a harvest's gfns); it keeps its default
  when read back.
- `"whole": True`: written rounded to an integer (nanosecond totals, as QEMU
  prints its integer counters).
- `"omit-empty": True`: left out of the dict while empty (a one-slot sync has no
  per-slot records).

Reading is lenient in one way only, so that old results.jsonl lines keep
working: a missing key (or a null nested record) takes the field's default,
and keys no field declares are ignored. Nested dataclasses, and lists or
tuples of them, round-trip through the same two functions. A field list is
therefore never kept by hand twice (guestperf's `Scenario.deserialize`
drifted from `serialize` that way).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

T = TypeVar("T")

KEY, SKIP, WHOLE, OMIT_EMPTY = "key", "skip", "whole", "omit-empty"


def keyed(key: str, **kwargs: Any) -> Any:
    """A dataclass field reported under `key` (QEMU's name, with its unit implied)."""
    return dataclasses.field(metadata={KEY: key}, **kwargs)


def field_key(f: dataclasses.Field) -> str:
    """The dict key of field `f`."""
    return f.metadata.get(KEY, f.name.replace("_", "-"))


def record_fields(cls: Any) -> tuple[dataclasses.Field, ...]:
    """The fields of dataclass `cls` (or of an instance) that belong to its record."""
    return tuple(f for f in dataclasses.fields(cls) if not f.metadata.get(SKIP))


def to_dict(obj: Any) -> dict[str, Any]:
    """The record of dataclass instance `obj` as a plain (JSON-ready) dict."""
    out: dict[str, Any] = {}
    for f in record_fields(obj):
        value = getattr(obj, f.name)
        if f.metadata.get(OMIT_EMPTY) and not value:
            continue
        if f.metadata.get(WHOLE):
            value = round(value)
        out[field_key(f)] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """An instance of dataclass `cls` from its record; a missing key takes the default.

    Raise `TypeError` if `data` (or a nested record) is not a dict, or if a field
    without a default is missing.
    """
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__}: expected a dict, not {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in record_fields(cls):
        key = field_key(f)
        if key not in data:
            continue
        value, hint = data[key], hints[f.name]
        nested = _record_type(hint)
        if nested is not None:
            if value is None and not _is_optional(hint):
                continue  # an old report's null record: the default
            if isinstance(value, dict):
                value = from_dict(nested, value)
            elif isinstance(value, list):
                items = [from_dict(nested, v) for v in value]
                value = tuple(items) if typing.get_origin(hint) is tuple else items
        kwargs[f.name] = value
    return cls(**kwargs)


def _record_type(hint: Any) -> type | None:
    """The dataclass in `hint` (`X`, `list[X]`, `tuple[X, ...]`, `X | None`), if any."""
    for c in (hint, *typing.get_args(hint)):
        if isinstance(c, type) and dataclasses.is_dataclass(c):
            return c
    return None


def _is_optional(hint: Any) -> bool:
    return type(None) in typing.get_args(hint)


class Record:
    """Mixin for migrate's own dataclasses: `to_dict()` and `from_dict()` as methods."""

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        return from_dict(cls, data)
