"""Build dataclass instances with every field away from its default, from the field types.

A round-trip test that leaves fields at their defaults cannot see a field that
`to_dict` forgets: `from_dict` puts the default back. Values come from each
field's type (and, for a validated choice, from the tuples of allowed strings
in the class's module), so a new field is covered without touching the tests.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from typing import Any

from migrate.record import WHOLE, record_fields


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def every_field_set(cls: type, depth: int = 0) -> Any:
    """An instance of `cls` whose every record field differs from its default.

    Each field takes the first value derived from its type that `cls` accepts
    (its `__post_init__` may validate); nested records are filled the same way.
    """
    hints = typing.get_type_hints(cls)
    module = sys.modules[cls.__module__]
    kwargs: dict[str, Any] = {}
    fields = record_fields(cls)
    for f in fields:  # start from values a validating class accepts
        default = default_of(f)
        kwargs[f.name] = (default if default is not dataclasses.MISSING
                          else _candidates(f, hints[f.name], default, module, depth)[0])
    for f in fields:
        default = default_of(f)
        candidates = _candidates(f, hints[f.name], default, module, depth)
        if not candidates:
            continue  # a nested record's own list of records: one level is enough
        for value in candidates:
            try:
                cls(**{**kwargs, f.name: value})
            except (ValueError, TypeError):
                continue
            kwargs[f.name] = value
            break
        else:
            raise AssertionError(f"{cls.__name__}.{f.name}: no non-default value derived "
                                 f"from {hints[f.name]!r} is accepted")
    return cls(**kwargs)


def _candidates(f: dataclasses.Field, hint: Any, default: Any, module: Any,
                depth: int) -> list[Any]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if args and type(None) in args and origin is not tuple:  # X | None
        inner = next(a for a in args if a is not type(None))
        return _candidates(f, inner, None if default is None else default, module, depth)
    if hint is bool:
        return [not default]
    if hint is int:
        base = default if isinstance(default, int) else 0
        return [base + 1, base - 1, base + 7]
    if hint is float:
        base = default if isinstance(default, int | float) else 0.0
        if f.metadata.get(WHOLE):  # stored whole: an integral value survives the trip
            return [base + 7.0]
        return [base * 2 if base else 1.5, base + 0.25, base / 2]
    if hint is str:
        choices = [c for v in vars(module).values()
                   if isinstance(v, tuple) and default in v and all(isinstance(x, str) for x in v)
                   for c in v if c != default]
        return [*choices, f"{default or 'x'}-set"]
    if dataclasses.is_dataclass(hint):
        return [every_field_set(hint, depth + 1)]
    if origin in (list, tuple) and args:
        item = args[0]
        if dataclasses.is_dataclass(item):
            if depth > 0:  # one level of nesting covers the recursive records
                return []
            items = [every_field_set(item, depth + 1), every_field_set(item, depth + 1)]
        else:
            items = [_candidates(f, item, None, module, depth)[0] for _ in range(2)]
        return [origin(items)]
    if origin is dict or hint is dict:
        return [{"set": 1}]
    raise AssertionError(f"{f.name}: no value derived from {hint!r}; teach tests/records.py")
