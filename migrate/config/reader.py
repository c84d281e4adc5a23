"""A typed reader for TOML tables: the one place a config value is checked and named.

Every message is one line that starts with `config:` and names the dotted key
and the value, so a user knows what to change without reading code.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from vmmodel import PAGE_SIZE

_REQUIRED = object()
_UTF8_BOM = b"\xef\xbb\xbf"


class ConfigError(ValueError):
    """A scenario that cannot be loaded; the one-line message names the key and the value."""


def error(message: str) -> ConfigError:
    """Return a ConfigError with the one `config:` prefix every message carries."""
    return ConfigError(f"config: {message}")


class Table:
    """One TOML table being read: its dotted path for messages, typed getters.

    Raise `ConfigError` at construction if *data* is not a table or has a key
    outside *keys*, so a misspelt key is reported before anything else.
    """

    def __init__(self, data: object, path: str, keys: Iterable[str]) -> None:
        self.path = path
        keys = list(keys)
        if not isinstance(data, dict):
            raise error(f"{path}: expected a table, got {data!r}")
        for name in data:
            if name not in keys:
                close = difflib.get_close_matches(name, keys, n=1)
                hint = f" (did you mean {self.key(close[0])!r}?)" if close else ""
                raise error(f"unknown key {self.key(name)!r}{hint}")
        self.data = data

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def has(self, name: str) -> bool:
        return name in self.data

    def raw(self, name: str, default: Any = _REQUIRED) -> Any:
        if name in self.data:
            return self.data[name]
        if default is _REQUIRED:
            raise error(f"missing key {self.key(name)!r}")
        return default

    def bad(self, name: str, value: Any, why: str) -> ConfigError:
        return error(f"{self.key(name)}: {value!r} {why}")

    def integer(self, name: str, default: Any = _REQUIRED) -> int:
        value = self.raw(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.bad(name, value, "is not an integer")
        return value

    def number(self, name: str, default: Any = _REQUIRED) -> float:
        value = self.raw(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.bad(name, value, "is not a number")
        try:
            return float(value)
        except OverflowError:  # an integer past 1.8e308
            raise self.bad(name, value, "is not a finite number") from None

    def flag(self, name: str, default: Any = _REQUIRED) -> bool:
        value = self.raw(name, default)
        if not isinstance(value, bool):
            raise self.bad(name, value, "is not true or false")
        return value

    def choice(self, name: str, choices: Sequence[str], default: Any = _REQUIRED) -> str:
        value = self.raw(name, default)
        if not isinstance(value, str) or value not in choices:
            raise self.bad(name, value, f"is not one of {', '.join(choices)}")
        return value

    def unit(self, name: str, parse: Callable[..., Any], *args: Any, default: Any = _REQUIRED):
        """Return the value parsed by one of `migrate.units`' parsers."""
        try:
            return parse(self.raw(name, default), *args)
        except ValueError as exc:
            raise error(f"{self.key(name)}: {exc}") from None

    def pages(self, name: str, parse: Callable[..., int], default: Any = _REQUIRED) -> int:
        """Return a size that must be whole 4 KiB pages, in pages."""
        size = self.unit(name, parse, default=default)
        if size % PAGE_SIZE:
            raise self.bad(name, self.raw(name, default), "is not a multiple of 4KiB")
        return size // PAGE_SIZE


def read_toml(path: Path, where: str = "") -> dict[str, Any]:
    """Return the TOML file at *path* as a dict; *where* names the key that named it.

    A UTF-8 byte-order mark is skipped, as editors on Windows write one and
    tomllib rejects it. Raise `ConfigError` naming the file if it cannot be
    read, is not UTF-8 text, or is not valid TOML.
    """
    lead = f"{where}: " if where else ""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise error(f"{lead}cannot read {str(path)!r}: {exc.strerror}") from None
    if raw.startswith(_UTF8_BOM):
        raw = raw[len(_UTF8_BOM):]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{lead}{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
                    f"{exc.start}); save it as UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{lead}{path}: {exc}") from None
