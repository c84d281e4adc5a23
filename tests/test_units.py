"""Units: what users write parses exactly, errors name the text, formats parse back."""

import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from migrate.units import (
    format_bytes,
    format_ns,
    format_rate,
    parse_rate,
    parse_size,
    parse_size_or_share,
    parse_time_ns,
)

KiB, MiB, GiB = 1024, 1024**2, 1024**3
# Same inputs every run, and no example database written into the checkout.
HYP = settings(max_examples=200, deadline=None, derandomize=True, database=None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1GiB", GiB),
        ("16MiB", 16 * MiB),
        ("512KiB", 512 * KiB),
        ("2TiB", 2 * 1024 * GiB),
        ("4096", 4096),
        ("4096B", 4096),
        ("1GB", 10**9),
        ("1MB", 10**6),
        ("1kB", 1000),
        ("1KB", 1000),
        ("4G", 4 * GiB),  # QEMU's -m 4G
        ("64M", 64 * MiB),
        ("1.5GiB", 3 * GiB // 2),
        (" 2 MiB ", 2 * MiB),
        ("0", 0),
        ("1e3", 1000),
        (4096, 4096),
        (1e9, 10**9),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected
    assert isinstance(parse_size(text), int)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("1XB", "unknown unit 'XB'"),
        ("1gib", "unknown unit 'gib'"),
        ("-1GiB", "negative"),
        ("1.5B", "not a whole number of bytes"),
        ("0.1KiB", "not a whole number of bytes"),
        ("GiB", "expected a number"),
        ("", "expected a number"),
        ("1 2MiB", "unknown unit"),
        (True, "expected a number or a string"),
        (None, "expected a number or a string"),
        ([1], "expected a number or a string"),
        (float("nan"), "not a finite number"),
        (float("inf"), "not a finite number"),
        (-4096, "negative"),
        (0.5, "not a whole number of bytes"),
    ],
)
def test_parse_size_errors_name_the_text(text, reason):
    with pytest.raises(ValueError) as err:
        parse_size(text)
    message = str(err.value)
    assert message.startswith(f"size {text!r}:")
    assert reason in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("text", "whole", "expected"),
    [
        ("100%", GiB, GiB),
        ("50%", GiB, GiB // 2),
        ("0%", GiB, 0),
        ("12.5 %", 800, 100),
        ("33%", 100, 33),
        ("1%", 150, 1),  # rounds down
        ("512MiB", GiB, 512 * MiB),
        (4096, GiB, 4096),
    ],
)
def test_parse_size_or_share(text, whole, expected):
    assert parse_size_or_share(text, whole) == expected


@pytest.mark.parametrize("text", ["101%", "-1%", "x%", "5MiB%", "%"])
def test_parse_share_errors(text):
    with pytest.raises(ValueError, match=r"^share '.*%': expected a percentage"):
        parse_size_or_share(text, GiB)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("128MiB/s", 128.0 * MiB),
        ("1Gbit/s", 1.25e8),
        ("10Gbit/s", 1.25e9),
        ("1Gbps", 1.25e8),
        ("100Mbit/s", 1.25e7),
        ("100kbit/s", 12_500.0),
        ("8bit/s", 1.0),
        ("100MB/s", 1e8),
        ("1GiB/s", float(GiB)),
        ("12345", 12345.0),
        ("0.5MB/s", 5e5),
        (1e8, 1e8),
        (100, 100.0),
        (0.1, 0.1),
    ],
)
def test_parse_rate(text, expected):
    assert parse_rate(text) == expected
    assert isinstance(parse_rate(text), float)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("1Gb/s", "unknown unit 'Gb/s'"),
        ("128MiB", "unknown unit 'MiB'"),
        ("-1MB/s", "negative"),
        ("fast", "expected a number"),
        (False, "expected a number or a string"),
    ],
)
def test_parse_rate_errors_name_the_text(text, reason):
    with pytest.raises(ValueError) as err:
        parse_rate(text)
    assert str(err.value).startswith(f"rate {text!r}:")
    assert reason in str(err.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("300ms", 300_000_000),
        ("1s", 10**9),
        ("100us", 100_000),
        ("100µs", 100_000),
        ("5ns", 5),
        ("2.5s", 2_500_000_000),
        ("0.1us", 100),
        ("2min", 120 * 10**9),
        ("120 s", 120 * 10**9),
        ("0", 0),
        (0, 0),
    ],
)
def test_parse_time(text, expected):
    assert parse_time_ns(text) == expected
    assert isinstance(parse_time_ns(text), int)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("300", "needs a unit"),
        (300, "needs a unit"),
        (0.5, "needs a unit"),
        ("1h", "unknown unit 'h'"),
        ("1.5ns", "not a whole number of nanoseconds"),
        ("-1s", "negative"),
        ("ms", "expected a number"),
    ],
)
def test_parse_time_errors_name_the_text(text, reason):
    with pytest.raises(ValueError) as err:
        parse_time_ns(text)
    assert str(err.value).startswith(f"time {text!r}:")
    assert reason in str(err.value)


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (GiB, "1GiB"),
        (16 * MiB, "16MiB"),
        (4096, "4KiB"),
        (10**9, "1GB"),
        (3 * GiB // 2, "1536MiB"),
        (1000, "1kB"),
        (4097, "4097B"),
        (0, "0B"),
    ],
)
def test_format_bytes_exact(n, text):
    assert format_bytes(n) == text


@pytest.mark.parametrize(
    ("bps", "text"),
    [
        (128.0 * MiB, "128MiB/s"),
        (1.25e9, "10Gbit/s"),
        (1.25e8, "1Gbit/s"),
        (1e8, "100MB/s"),
        (12345.0, "12345B/s"),
        (0.1, "0.1B/s"),
    ],
)
def test_format_rate_exact(bps, text):
    assert format_rate(bps) == text


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (300_000_000, "300ms"),
        (10**9, "1s"),
        (120 * 10**9, "120s"),
        (100_000, "100us"),
        (2_500_000_000, "2500ms"),
        (7, "7ns"),
        (0, "0s"),
    ],
)
def test_format_ns_exact(ns, text):
    assert format_ns(ns) == text


def test_format_for_display_rounds():
    assert format_bytes(3 * GiB // 2, exact=False) == "1.5GiB"
    assert format_bytes(123_456_789, exact=False) == "117.7MiB"
    assert format_bytes(10, exact=False) == "10B"
    assert format_rate(1.25e9, exact=False) == "1.164GiB/s"
    assert format_ns(2_500_000_000, exact=False) == "2.5s"
    assert format_ns(1_234_567, exact=False) == "1.235ms"
    assert format_ns(0, exact=False) == "0ns"


@HYP
@given(st.integers(min_value=0, max_value=2**62))
def test_format_bytes_round_trips(n):
    assert parse_size(format_bytes(n)) == n


@HYP
@given(st.floats(min_value=0, max_value=1e15, allow_nan=False, allow_infinity=False))
def test_format_rate_round_trips(bps):
    assert parse_rate(format_rate(bps)) == bps


@HYP
@given(st.integers(min_value=0, max_value=10**15))
def test_format_ns_round_trips(ns):
    assert parse_time_ns(format_ns(ns)) == ns


@HYP
@given(st.fractions(min_value=0, max_value=100, max_denominator=1000))
def test_parsing_is_exact(value):
    """Decimal spellings are read exactly: no float rounding on the way."""
    text = f"{float(value):.3f}"
    assert parse_size_or_share(f"{text}%", 10**5) == int(Fraction(text) * 10**5 / 100)
    ns = Fraction(text) * 10**9
    if ns.denominator == 1:
        assert parse_time_ns(f"{text}s") == ns


def test_property_tests_write_nothing_into_the_checkout(tmp_path):
    """Run this file's property tests from an empty directory: nothing may appear in it."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-k", "test_format_ns_round_trips", str(Path(__file__))],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_every_property_test_here_is_seeded_and_keeps_no_database():
    tests = [f for name, f in globals().items()
             if name.startswith("test_") and getattr(f, "is_hypothesis_test", False)]
    assert len(tests) == 4
    for test in tests:
        chosen = test._hypothesis_internal_use_settings
        assert chosen.derandomize and chosen.database is None, test.__name__


@pytest.mark.parametrize(("parse", "text", "base"), [
    (parse_size, "1e400B", "bytes"),
    (parse_size, 1e300, "bytes"),
    (parse_rate, "1e400B/s", "bytes/s"),
    (parse_time_ns, "1e20s", "ns"),
])
def test_quantities_past_2_63_base_units_are_too_large(parse, text, base):
    with pytest.raises(ValueError, match=re.escape(f"{text!r}: too large (more than 2^63 {base})")):
        parse(text)
    assert parse_time_ns("300000min") == 300_000 * 60 * 10**9  # 208 days is not too large
