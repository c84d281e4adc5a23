"""Dataclasses that serialise to QEMU's spelling and back, built from `dataclasses.fields`.

A field's report key is its `key` metadata, else its name with hyphens, so a
field list is never kept by hand twice (guestperf's `Scenario.deserialize`
drifted from `serialize` that way). Nested records and lists of records
round-trip through their own `to_dict`/`from_dict`.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

T = TypeVar("T", bound="Record")


def keyed(key: str, **kwargs: Any) -> Any:
    """A dataclass field reported under `key` (QEMU's name, with its unit implied)."""
    return dataclasses.field(metadata={"key": key}, **kwargs)


def _key(f: dataclasses.Field) -> str:
    return f.metadata.get("key", f.name.replace("_", "-"))


class Record:
    """Mixin for dataclasses: `to_dict()` and `from_dict()`."""

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, Record):
                value = value.to_dict()
            elif isinstance(value, list):
                value = [v.to_dict() if isinstance(v, Record) else v for v in value]
            out[_key(f)] = value
        return out

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if _key(f) not in data:
                continue
            value, hint = data[_key(f)], hints[f.name]
            record = _record_type(hint)
            if record is not None and isinstance(value, dict):
                value = record.from_dict(value)
            elif record is not None and isinstance(value, list):
                value = [record.from_dict(v) for v in value]
            kwargs[f.name] = value
        return cls(**kwargs)


def _record_type(hint: Any) -> type[Record] | None:
    """The Record class in `hint` (`X`, `list[X]`, `X | None`), if any."""
    candidates = [hint, *typing.get_args(hint)]
    for c in candidates:
        if isinstance(c, type) and issubclass(c, Record):
            return c
    return None
