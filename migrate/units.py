"""Sizes, rates and times as people write them: "1GiB", "10Gbit/s", "300ms".

Config files and the command line speak in units; the model speaks in bytes,
bytes per second and nanoseconds. Parsing is exact (fractions, not floats), so
"2.5s" is 2_500_000_000 ns, and every exact `format_*` output parses back to
the value it came from, which is what lets a resolved config round-trip.

Conventions: KiB/MiB/GiB/TiB are binary; kB/MB/GB/TB and every bit rate are
decimal; a bare K/M/G/T is binary, as in QEMU's `-m 4G`. A bare number is
bytes (sizes) or bytes per second (rates); a time always needs its unit.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

_KI = 1024
MIB = _KI**2  # for figures printed in MiB

_SIZE_UNITS: dict[str, int] = {
    "B": 1,
    "KiB": _KI,
    "MiB": _KI**2,
    "GiB": _KI**3,
    "TiB": _KI**4,
    "K": _KI,
    "M": _KI**2,
    "G": _KI**3,
    "T": _KI**4,
    "kB": 10**3,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
}

_BIT_UNITS: dict[str, Fraction] = {}
for _prefix, _scale in (
    ("", 1),
    ("k", 10**3),
    ("K", 10**3),
    ("M", 10**6),
    ("G", 10**9),
    ("T", 10**12),
):
    _BIT_UNITS[f"{_prefix}bit/s"] = Fraction(_scale, 8)
    _BIT_UNITS[f"{_prefix}bps"] = Fraction(_scale, 8)

_RATE_UNITS: dict[str, Fraction] = {
    **{f"{unit}/s": Fraction(scale) for unit, scale in _SIZE_UNITS.items()},
    **_BIT_UNITS,
}

_TIME_UNITS: dict[str, int] = {
    "ns": 1,
    "us": 10**3,
    "µs": 10**3,
    "ms": 10**6,
    "s": 10**9,
    "min": 60 * 10**9,
}

# Canonical spellings tried by the exact formatters; the shortest wins, ties
# go to the earlier entry.
_SIZE_CANON = ("TiB", "GiB", "MiB", "KiB", "TB", "GB", "MB", "kB", "B")
_RATE_CANON = (
    "TiB/s",
    "GiB/s",
    "MiB/s",
    "KiB/s",
    "Tbit/s",
    "Gbit/s",
    "Mbit/s",
    "kbit/s",
    "TB/s",
    "GB/s",
    "MB/s",
    "kB/s",
    "B/s",
    "bit/s",
)
_TIME_CANON = ("s", "ms", "us", "ns")

_NUMBER = re.compile(
    r"\s*(?P<num>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(?P<unit>.*?)\s*"
)


_EXAMPLE = {"size": "'1GiB'", "rate": "'128MiB/s'", "time": "'300ms'"}
_BASE = {"size": "bytes", "rate": "bytes/s", "time": "ns"}
# The largest quantity in a base unit (16 EiB, 292 years): past it a number is a typo, and
# would overflow the float or int64 that the model keeps it in.
MAX_QUANTITY = 2**63


def _split(text: str, what: str) -> tuple[Fraction, str]:
    match = _NUMBER.fullmatch(text)
    if match is None:
        raise ValueError(f"{what} {text!r}: expected a number and a unit, like {_EXAMPLE[what]}")
    return Fraction(match["num"]), match["unit"]


def _quantity(
    value: object, what: str, units: dict, canon: tuple[str, ...], bare: int | None
) -> Fraction:
    """Return *value* in the base unit (bytes, bytes/s, ns) as an exact fraction.

    Raise `ValueError`, naming the text, if it is not a non-negative finite
    number of at most `MAX_QUANTITY` base units with one of *units* (*canon*
    are the ones to suggest; *bare* is the scale of a unitless number, None
    when a unit is required).
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{what} {value!r}: expected a number or a string like {_EXAMPLE[what]}")
    if isinstance(value, str):
        number, unit = _split(value, what)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{what} {value!r}: not a finite number")
    else:
        number, unit = Fraction(value), ""
    if number < 0:
        raise ValueError(f"{what} {value!r}: negative")
    if unit == "":
        if bare is None and number != 0:
            raise ValueError(f"{what} {value!r}: needs a unit ({', '.join(canon)})")
        return _bounded(number * (bare or 1), value, what)
    if unit not in units:
        raise ValueError(f"{what} {value!r}: unknown unit {unit!r} (use {', '.join(canon)})")
    return _bounded(number * units[unit], value, what)


def _bounded(amount: Fraction, value: object, what: str) -> Fraction:
    if amount > MAX_QUANTITY:
        raise ValueError(f"{what} {value!r}: too large (more than 2^63 {_BASE[what]})")
    return amount


def _whole(amount: Fraction, value: object, what: str, base: str) -> int:
    if amount.denominator != 1:
        raise ValueError(f"{what} {value!r}: not a whole number of {base}")
    return int(amount)


def parse_size(value: str | int | float) -> int:
    """Return the size *value* ("512MiB", "1GB", 4096) in bytes.

    Raise `ValueError`, naming *value*, if the unit is unknown, the size is
    negative, or it is not a whole number of bytes.
    """
    return _whole(_quantity(value, "size", _SIZE_UNITS, _SIZE_CANON, 1), value, "size", "bytes")


def parse_size_or_share(value: str | int | float, whole: int) -> int:
    """Return *value* in bytes, where a share ("25%") is a share of *whole* bytes.

    A share rounds down to a whole byte. Raise `ValueError`, naming *value*,
    if it is not a size (see `parse_size`) or a share outside 0..100 %.
    """
    if isinstance(value, str) and value.strip().endswith("%"):
        match = _NUMBER.fullmatch(value.strip()[:-1])
        number = Fraction(match["num"]) if match and not match["unit"] else Fraction(-1)
        if not 0 <= number <= 100:
            raise ValueError(f"share {value!r}: expected a percentage from 0% to 100%")
        return math.floor(number * whole / 100)
    return parse_size(value)


def parse_rate(value: str | int | float) -> float:
    """Return the rate *value* ("128MiB/s", "10Gbit/s", 1e8) in bytes per second.

    Raise `ValueError`, naming *value*, if the unit is unknown or the rate is
    negative.
    """
    return float(_quantity(value, "rate", _RATE_UNITS, _RATE_CANON, 1))


def parse_time_ns(value: str | int | float) -> int:
    """Return the duration *value* ("300ms", "2.5s", "100us") in nanoseconds.

    A bare number is accepted only for zero: "300" could mean ms or s. Raise
    `ValueError`, naming *value*, if the unit is missing or unknown, the time
    is negative, or it is not a whole number of nanoseconds.
    """
    amount = _quantity(value, "time", _TIME_UNITS, (*_TIME_CANON, "min"), None)
    return _whole(amount, value, "time", "nanoseconds")


def _format_exact(amount: Fraction, units: dict, canon: tuple[str, ...]) -> str | None:
    best: str | None = None
    for unit in canon:
        scaled = amount / units[unit]
        if scaled.denominator == 1:
            text = f"{scaled.numerator}{unit}"
            if best is None or len(text) < len(best):
                best = text
    return best


def _format_approx(amount: float, steps: tuple[tuple[str, float], ...]) -> str:
    unit, scale = next(((u, s) for u, s in steps if amount >= s), steps[-1])
    scaled = amount / scale
    decimals = max(0, 4 - len(str(int(scaled))))  # about four significant digits
    text = f"{scaled:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{text}{unit}"


def format_bytes(n: int, *, exact: bool = True) -> str:
    """Spell *n* bytes: exactly ("1GiB", "1536MiB", "1GB"), or rounded for display.

    The exact form is the shortest one that `parse_size` turns back into *n*.
    """
    if exact:
        return _format_exact(Fraction(n), _SIZE_UNITS, _SIZE_CANON) or f"{n}B"
    steps = tuple((u, float(_SIZE_UNITS[u])) for u in ("TiB", "GiB", "MiB", "KiB", "B"))
    return _format_approx(float(n), steps)


def format_rate(bps: float, *, exact: bool = True) -> str:
    """Spell *bps* bytes per second: exactly ("128MiB/s", "10Gbit/s"), or rounded.

    The exact form is the shortest one that `parse_rate` turns back into *bps*.
    """
    if exact:
        return _format_exact(Fraction(bps), _RATE_UNITS, _RATE_CANON) or f"{bps!r}B/s"
    steps = tuple((u, float(_RATE_UNITS[u])) for u in ("GiB/s", "MiB/s", "KiB/s", "B/s"))
    return _format_approx(float(bps), steps)


def format_ns(ns: int, *, exact: bool = True) -> str:
    """Spell *ns* nanoseconds: exactly ("300ms", "2500ms"), or rounded ("2.5s").

    The exact form is the shortest one that `parse_time_ns` turns back into *ns*.
    """
    if exact:
        return _format_exact(Fraction(ns), _TIME_UNITS, _TIME_CANON) or f"{ns}ns"
    steps = tuple((u, float(_TIME_UNITS[u])) for u in _TIME_CANON)
    return _format_approx(float(ns), steps)
