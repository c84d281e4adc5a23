"""Raise glibc's malloc thresholds so that MiB-sized messages are not mmap'ed per message.

Measured here (DESIGN.md, "Wire"): without it aiohttp's large messages are
freed to the OS and faulted back in every time, ~1 GB/s instead of 3-5 GB/s.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1  # glibc malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc caps it at 32 MiB on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = 256 << 20


def raise_malloc_thresholds() -> bool:
    """Return True if glibc took both settings (False elsewhere, e.g. musl or macOS)."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok_mmap = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok_trim = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return ok_mmap and ok_trim
