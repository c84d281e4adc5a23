"""A second, plain PAGES encoder and a frame splitter, for tests only.

Written from the layout table in `migrate.wire`'s docstring with `struct` and
`bytes`, not from the encoder's code, so that a test comparing the two pins
the format rather than the implementation. Slow on purpose: clarity over speed.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

import lz4.block
import numpy as np

from migrate import wire
from migrate.errors import TruncatedMessage


def encode_pages(pass_no: int, gfns: np.ndarray, pages: np.ndarray, *,
                 compress: bool = False) -> bytes:
    """One PAGES frame: *pages[i]* is the content of *gfns[i]*; all-zero pages go as ZERO."""
    gfns = [int(g) for g in np.asarray(gfns)]
    n = len(gfns)
    assert pages.shape == (n, wire.PAGE_SIZE) and pages.dtype == np.uint8
    zero = [not pages[i].any() for i in range(n)]
    payload = b"".join(pages[i].tobytes() for i in range(n) if not zero[i])
    flags = 0
    if compress and payload:
        packed = lz4.block.compress(payload, store_size=False)
        if 4 + len(packed) < len(payload):  # kept only if it shrinks the batch
            flags, payload = wire.FLAG_LZ4, struct.pack("<I", len(payload)) + packed
    body = (struct.pack("<II", n, 0) + struct.pack(f"<{n}Q", *gfns)
            + bytes(int(z) for z in zero) + bytes(-n % 8) + payload)
    return struct.pack("<4sBBHII", b"PCPY", 1, wire.MsgType.PAGES, flags, pass_no,
                       len(body)) + body


def join(parts: Iterable[wire.Buffer]) -> bytes:
    """A frame's parts as one bytes object (the data path writes the parts as they are)."""
    return b"".join(bytes(part) for part in parts)


def split_frames(buf: wire.Buffer, max_body: int) -> Iterator[tuple[wire.Header, memoryview]]:
    """Split a whole byte buffer into validated (header, body) frames, bodies viewing *buf*.

    Raise `TruncatedMessage` if *buf* ends inside a frame, and what
    `wire.parse_header` raises for a bad header.
    """
    view = memoryview(buf).cast("B")
    off = 0
    while off < len(view):
        header = wire.parse_header(view[off : off + wire.HEADER_SIZE], max_body)
        end = off + wire.HEADER_SIZE + header.length
        if end > len(view):
            raise TruncatedMessage(f"body declares {header.length} bytes, "
                                   f"{len(view) - off - wire.HEADER_SIZE} remain")
        yield header, view[off + wire.HEADER_SIZE : end]
        off = end
