"""The migration wire format, version 1: framed, little-endian, validated before use.

Every message is a frame: a fixed 16-byte header, then ``length`` body bytes.
Page batches are encoded and decoded with whole-array numpy operations (never a
Python loop per page) because this is the data path; everything else is rare.

Header (16 bytes, ``struct "<4sBBHII"``)

======  =======  ===========================================================
field   type     validation (``parse_header``)
======  =======  ===========================================================
magic   4 bytes  must be ``b"PCPY"``, else ``BadMagic``
version u8       must be ``VERSION`` (1), else ``UnsupportedVersion``
type    u8       a ``MsgType`` (1..8), else ``UnknownMessageType``
flags   u16      only ``FLAG_LZ4`` (bit 0) is defined, and only on PAGES;
                 any other bit set is ``ReservedBitsSet``
pass    u32      the precopy pass the message belongs to (ordering is the
                 receiver's business: ``PassOutOfOrder``)
length  u32      body bytes that follow; above ``max_body`` is ``MessageTooLarge``
======  =======  ===========================================================

Bodies by type: HELLO=1, END_OF_PASS=3, COMPLETE=5, RESUMED=6 and ERROR=7 carry
a UTF-8 JSON object (``decode_control``: ``BadControlMessage`` for bad UTF-8,
bad JSON, NaN/Infinity, nesting too deep, or a non-object); DEVICE_STATE=4
carries opaque bytes; PAGE_DIGESTS=8 carries one u64 per guest page (the
source's ``digest.page_digests`` at pause: exactly 8 x memory pages bytes, else
``PayloadLengthMismatch``); PAGES=2 carries a batch of pages:

==========  ==================  ================================================
field       type                validation (``decode_pages``)
==========  ==================  ================================================
count       u32                 body shorter than 8 bytes is ``TruncatedMessage``;
                                count > ``max_count`` is ``MessageTooLarge``
reserved    u32                 must be 0, else ``ReservedBitsSet``
gfns        u64[count]          each < ``max_gfn`` (``GfnOutOfRange`` names the
                                first bad one); no gfn twice (``DuplicateGfn``)
kinds       u8[count]           0 NORMAL or 1 ZERO, else ``BadPageKind``
padding     0..7 bytes          to the next multiple of 8 of the body; must be
                                zero (``ReservedBitsSet``); a body ending
                                before here is ``TruncatedMessage``
payload     bytes               without FLAG_LZ4: exactly 4096 bytes per NORMAL
                                page, in batch order (``PayloadLengthMismatch``)
raw_size    u32 (FLAG_LZ4)      must equal 4096 x NORMAL pages; checked before
                                decompressing (``DecompressedSizeMismatch``)
lz4 data    bytes (FLAG_LZ4)    one ``lz4.block`` block (no stored size) that
                                must expand to exactly raw_size bytes, else
                                ``DecompressedSizeMismatch``
==========  ==================  ================================================

ZERO pages carry no payload (QEMU's ``duplicate``). The encoder sets FLAG_LZ4
only when compression shrinks the batch, so random pages travel raw.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, NamedTuple, Protocol

import lz4.block
import numpy as np

from migrate.errors import (
    BadControlMessage,
    BadMagic,
    BadPageKind,
    DecompressedSizeMismatch,
    DuplicateGfn,
    GfnOutOfRange,
    MessageTooLarge,
    PayloadLengthMismatch,
    ReservedBitsSet,
    TruncatedMessage,
    UnexpectedMessage,
    UnknownMessageType,
    UnsupportedVersion,
)
from vmmodel import PAGE_SIZE  # the model's page is the wire's: HELLO's page-size says which

MAGIC = b"PCPY"
UPGRADE = "precopy-pages/1"  # the Upgrade token of a raw page channel
VERSION = 1
HEADER = struct.Struct("<4sBBHII")
HEADER_SIZE = HEADER.size
_U32 = struct.Struct("<I")
_PAGES_PREFIX = struct.Struct("<II")  # count, reserved

FLAG_LZ4 = 0x0001
_KNOWN_FLAGS = FLAG_LZ4

_GFN_DTYPE = np.dtype("<u8")
_U32_MAX = 0xFFFF_FFFF

DEFAULT_MAX_COUNT = 65536
MAX_CHANNELS = 16  # parallel page channels of one pass (END_OF_PASS "channels")


class MsgType(IntEnum):
    """Frame type byte."""

    HELLO = 1
    PAGES = 2
    END_OF_PASS = 3
    DEVICE_STATE = 4
    COMPLETE = 5
    RESUMED = 6
    ERROR = 7
    PAGE_DIGESTS = 8


class PageKind(IntEnum):
    """Per-page kind byte in a PAGES batch."""

    NORMAL = 0
    ZERO = 1


CONTROL_TYPES = frozenset(
    {MsgType.HELLO, MsgType.END_OF_PASS, MsgType.COMPLETE, MsgType.RESUMED, MsgType.ERROR}
)


class Header(NamedTuple):
    """A parsed, validated frame header (magic and version are implied)."""

    type: MsgType
    flags: int
    pass_no: int
    length: int


class ByteReader(Protocol):
    """What ``read_frames`` needs: ``aiohttp.StreamReader`` and ``asyncio.StreamReader`` fit."""

    async def readexactly(self, n: int) -> bytes: ...


Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class PagesFrame:
    """An encoded PAGES frame, kept in parts so the caller writes them without joining.

    ``parts`` owns its memory (never aliases guest memory), so the guest may
    write its pages as soon as ``encode_gathered`` returns.
    ``payload_raw_bytes`` is 4096 x ``n_normal``; ``payload_wire_bytes`` is what
    the payload section occupies on the wire (raw_size word included when lz4).
    """

    parts: list[Buffer]
    nbytes: int
    n_pages: int
    n_zero: int
    n_normal: int
    payload_raw_bytes: int
    payload_wire_bytes: int
    compressed: bool


@dataclass(frozen=True, slots=True)
class PageBatch:
    """A decoded, validated PAGES batch.

    The arrays may be read-only views into the received body (or into the
    decompressed buffer): copy before mutating. ``pages[i]`` is the content of
    ``normal_gfns[i]``; ``zero_gfns`` are pages whose content is all zeros.
    """

    pass_no: int
    gfns: np.ndarray
    kinds: np.ndarray
    normal_gfns: np.ndarray
    zero_gfns: np.ndarray
    pages: np.ndarray
    compressed: bool


def _type_name(msg_type: int) -> str:
    try:
        return MsgType(msg_type).name
    except ValueError:
        return f"type {msg_type}"


class PagesLayout(NamedTuple):
    """Where the fields of a PAGES body of ``count`` pages start, from the start of the body."""

    gfns: int
    kinds: int
    padding: int
    payload: int


def pages_layout(count: int) -> PagesLayout:
    """Return the offsets of a *count*-page PAGES body (the module table).

    The one place they are computed: the encoder and the decoder both ask here.
    """
    gfns = _PAGES_PREFIX.size
    kinds = gfns + 8 * count
    padding = kinds + count
    return PagesLayout(gfns, kinds, padding, (padding + 7) & ~7)


def _check_pass(pass_no: int) -> None:
    if not 0 <= pass_no <= _U32_MAX:
        raise ValueError(f"pass number {pass_no} does not fit in u32")


def _pack_header(msg_type: MsgType, flags: int, pass_no: int, length: int) -> bytes:
    _check_pass(pass_no)
    if length > _U32_MAX:
        raise ValueError(f"body of {length} bytes does not fit in one frame")
    return HEADER.pack(MAGIC, VERSION, msg_type, flags, pass_no, length)


# -- encoding -------------------------------------------------------------------------------


def _checked_gfns(memory: np.ndarray, gfns: np.ndarray) -> np.ndarray:
    """Return *gfns* as an array after checking it and *memory* (see ``encode_gathered``)."""
    if memory.ndim != 2 or memory.shape[1] != PAGE_SIZE or memory.dtype != np.uint8:
        raise ValueError(f"memory must be (npages, {PAGE_SIZE}) uint8, got {memory.shape}")
    gfns = np.asarray(gfns)
    if gfns.ndim != 1 or gfns.dtype.kind not in "iu":
        raise ValueError(f"gfns must be a 1-D integer array, got {gfns.dtype} {gfns.shape}")
    if gfns.shape[0]:
        lo, hi = int(gfns.min()), int(gfns.max())
        if lo < 0 or hi >= memory.shape[0]:
            bad = lo if lo < 0 else hi
            raise IndexError(f"gfn {bad} outside guest memory of {memory.shape[0]} pages")
    return gfns


def run_start(gfns: np.ndarray) -> int | None:
    """The first of non-empty *gfns* if they are consecutive and ascending, else None.

    A run is read or written as one slice (a memcpy) instead of a fancy-indexed gather:
    a first pass is one run per batch.
    """
    n = gfns.shape[0]
    first = int(gfns[0])
    if int(gfns[-1]) - first != n - 1 or (n > 2 and not (np.diff(gfns) == 1).all()):
        return None
    return first


def zero_page_mask(memory: np.ndarray, gfns: np.ndarray, start: int | None = None) -> np.ndarray:
    """Return, for each of *gfns* (non-empty, checked), whether its page in *memory* is all zeros.

    A page whose first word is not zero cannot be a zero page, so only the
    others are read whole: random or text-like memory costs one word per page.
    *start*, if *gfns* are the run ``start, start + 1, ...``, lets them be read
    in place (no gather).
    """
    words = memory.view(np.uint64)
    n = gfns.shape[0]
    zero = (words[start : start + n, 0] if start is not None else words[gfns, 0]) == 0
    if not zero.any():
        return zero
    # np.bitwise_or.reduce reads memory faster than any() (~40 vs ~30 GB/s here).
    if zero.all():
        rows = words[start : start + n] if start is not None else words[gfns]
        if not np.bitwise_or.reduce(rows.reshape(-1)):  # one pass when all are zero
            return zero
        return np.bitwise_or.reduce(rows, axis=1) == 0
    zero[zero] = np.bitwise_or.reduce(words[gfns[zero]], axis=1) == 0
    return zero


def encode_gathered(
    pass_no: int, memory: np.ndarray, gfns: np.ndarray, *, compress: bool = False
) -> PagesFrame:
    """Read the pages at *gfns* from guest *memory* and encode them as one PAGES frame.

    The data path's encoder, with one copy: zero pages are found in place and
    never copied, the others are copied once, straight from guest memory into
    the frame (``tests/wire_oracle.py`` is the plain encoder it is checked
    against). The frame owns its bytes (the guest may write its memory as soon
    as this returns) and is one buffer, unless lz4 shrank the payload: then it
    is the metadata and the lz4 block.
    Raise ``IndexError`` for a gfn outside *memory*, ``ValueError`` for arrays
    of the wrong shape or dtype.
    """
    _check_pass(pass_no)
    gfns = np.asarray(gfns)
    n = gfns.shape[0] if gfns.ndim == 1 else 0
    start = run_start(gfns) if n and gfns.dtype.kind in "iu" else None
    if start is None or start < 0 or start + n > memory.shape[0]:
        gfns = _checked_gfns(memory, gfns)  # the slow checks, and their messages
    if not memory.flags.c_contiguous or memory.shape[1:] != (PAGE_SIZE,):
        raise ValueError(f"memory must be C-contiguous (npages, {PAGE_SIZE}) uint8")
    if n > _U32_MAX:
        raise ValueError(f"{n} pages do not fit in one batch")
    zero = zero_page_mask(memory, gfns, start) if n else np.zeros(0, dtype=bool)
    n_zero = int(np.count_nonzero(zero))
    n_normal = n - n_zero
    raw_bytes = n_normal * PAGE_SIZE

    layout = pages_layout(n)
    gfns_off, kinds_off = HEADER_SIZE + layout.gfns, HEADER_SIZE + layout.kinds
    pad_off, payload_off = HEADER_SIZE + layout.padding, HEADER_SIZE + layout.payload
    buf = np.empty(payload_off + raw_bytes, dtype=np.uint8)  # no zero fill: every byte is set
    _PAGES_PREFIX.pack_into(buf, HEADER_SIZE, n, 0)
    buf[gfns_off:kinds_off].view(_GFN_DTYPE)[:] = gfns
    buf[kinds_off : kinds_off + n] = zero  # True -> ZERO (1), False -> NORMAL (0)
    buf[pad_off:payload_off] = 0
    if n_normal:
        payload = buf[payload_off:].reshape(n_normal, PAGE_SIZE)
        normal_gfns = gfns if not n_zero else gfns[~zero]
        first = start if not n_zero else run_start(normal_gfns)
        if first is not None:  # a memcpy
            payload[:] = memory[first : first + n_normal]
        else:
            np.take(memory, normal_gfns, axis=0, out=payload, mode="clip")  # checked above
    return _seal(buf, pass_no, n, n_zero, payload_off, compress)


def encode_read(
    pass_no: int, gfns: np.ndarray, zero: np.ndarray,
    read: Callable[[np.ndarray, np.ndarray], None], *, compress: bool = False,
) -> PagesFrame:
    """Encode the pages at *gfns* as one PAGES frame, their bytes written by *read*.

    For guest memory that has no array to gather from (a generated backing):
    *zero* says which pages are zero pages, and ``read(normal_gfns, out)``
    writes the others' bytes straight into the frame's payload. The frame is
    the one ``encode_gathered`` makes of the same bytes, lz4 included.
    Raise ``ValueError`` for arrays of the wrong shape or dtype.
    """
    _check_pass(pass_no)
    gfns = np.asarray(gfns)
    zero = np.asarray(zero)
    if gfns.ndim != 1 or gfns.dtype.kind not in "iu" or zero.shape != gfns.shape:
        raise ValueError(f"gfns must be a 1-D integer array with a zero flag each, got "
                         f"{gfns.dtype} {gfns.shape} and {zero.shape}")
    n = gfns.shape[0]
    if n > _U32_MAX:
        raise ValueError(f"{n} pages do not fit in one batch")
    n_zero = int(np.count_nonzero(zero))
    n_normal = n - n_zero
    layout = pages_layout(n)
    gfns_off, kinds_off = HEADER_SIZE + layout.gfns, HEADER_SIZE + layout.kinds
    pad_off, payload_off = HEADER_SIZE + layout.padding, HEADER_SIZE + layout.payload
    buf = np.empty(payload_off + n_normal * PAGE_SIZE, dtype=np.uint8)
    _PAGES_PREFIX.pack_into(buf, HEADER_SIZE, n, 0)
    buf[gfns_off:kinds_off].view(_GFN_DTYPE)[:] = gfns
    buf[kinds_off : kinds_off + n] = zero
    buf[pad_off:payload_off] = 0
    if n_normal:
        read(gfns if not n_zero else gfns[~zero],
             buf[payload_off:].reshape(n_normal, PAGE_SIZE))
    return _seal(buf, pass_no, n, n_zero, payload_off, compress)


def _seal(buf: np.ndarray, pass_no: int, n: int, n_zero: int, payload_off: int,
          compress: bool) -> PagesFrame:
    """Finish a PAGES frame whose metadata and payload are in *buf*: lz4 it or not, then head it."""
    n_normal = n - n_zero
    raw_bytes = n_normal * PAGE_SIZE
    frame = dict(n_pages=n, n_zero=n_zero, n_normal=n_normal, payload_raw_bytes=raw_bytes)
    if compress and n_normal:
        packed = lz4.block.compress(memoryview(buf)[payload_off:], store_size=False)
        if _U32.size + len(packed) < raw_bytes:
            meta = bytearray(payload_off + _U32.size)
            meta[:payload_off] = memoryview(buf)[:payload_off]
            _U32.pack_into(meta, payload_off, raw_bytes)
            body_len = len(meta) - HEADER_SIZE + len(packed)
            meta[:HEADER_SIZE] = _pack_header(MsgType.PAGES, FLAG_LZ4, pass_no, body_len)
            return PagesFrame(parts=[meta, packed], nbytes=HEADER_SIZE + body_len,
                              payload_wire_bytes=_U32.size + len(packed), compressed=True,
                              **frame)
    if buf.shape[0] - HEADER_SIZE > _U32_MAX:
        raise ValueError(f"a batch of {n_normal} normal pages does not fit in one frame")
    HEADER.pack_into(buf, 0, MAGIC, VERSION, MsgType.PAGES, 0, pass_no, buf.shape[0] - HEADER_SIZE)
    return PagesFrame(parts=[memoryview(buf)], nbytes=buf.shape[0], payload_wire_bytes=raw_bytes,
                      compressed=False, **frame)


def encode_control(msg_type: MsgType | int, pass_no: int, obj: dict[str, Any]) -> bytes:
    """Encode a control message as one frame with a compact JSON body.

    Raise ``ValueError`` if *msg_type* is not a control type or *obj* is not a
    dict (or holds NaN/Infinity), ``TypeError`` if it is not JSON-serialisable.
    """
    if msg_type not in CONTROL_TYPES:
        raise ValueError(f"{msg_type!r} is not a control message type")
    if not isinstance(obj, dict):
        raise ValueError(f"control body must be a dict, got {type(obj).__name__}")
    body = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return _pack_header(MsgType(msg_type), 0, pass_no, len(body)) + body


def encode_device_state(pass_no: int, blob: Buffer) -> bytes:
    """Encode the guest's opaque device state as one DEVICE_STATE frame."""
    return _pack_header(MsgType.DEVICE_STATE, 0, pass_no, len(blob)) + bytes(blob)


def encode_digests(pass_no: int, digests: np.ndarray) -> bytes:
    """Encode the source's per-page digests (u64 per page) as one PAGE_DIGESTS frame."""
    body = np.ascontiguousarray(digests, dtype=_GFN_DTYPE).tobytes()
    return _pack_header(MsgType.PAGE_DIGESTS, 0, pass_no, len(body)) + body


# -- decoding -------------------------------------------------------------------------------


def parse_header(buf: Buffer, max_body: int) -> Header:
    """Validate and parse the 16-byte frame header at the start of *buf*.

    Raise ``TruncatedMessage`` if *buf* is shorter than a header, ``BadMagic``,
    ``UnsupportedVersion``, ``UnknownMessageType``, ``ReservedBitsSet`` for
    undefined or misplaced flags, and ``MessageTooLarge`` if the body exceeds
    *max_body*.
    """
    if len(buf) < HEADER_SIZE:
        raise TruncatedMessage(f"header needs {HEADER_SIZE} bytes, got {len(buf)}")
    magic, version, msg_type, flags, pass_no, length = HEADER.unpack_from(buf, 0)
    if magic != MAGIC:
        raise BadMagic(f"frame starts with {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise UnsupportedVersion(f"peer speaks wire version {version}, this side speaks {VERSION}")
    try:
        msg_type = MsgType(msg_type)
    except ValueError:
        raise UnknownMessageType(f"unknown message type {msg_type}") from None
    if flags & ~_KNOWN_FLAGS:
        raise ReservedBitsSet(f"undefined flag bits {flags & ~_KNOWN_FLAGS:#06x} set")
    if flags & FLAG_LZ4 and msg_type != MsgType.PAGES:
        raise ReservedBitsSet(f"lz4 flag set on a {msg_type.name} message")
    if length > max_body:
        raise MessageTooLarge(f"{msg_type.name} body of {length} bytes exceeds {max_body}")
    return Header(msg_type, flags, pass_no, length)


def decode_pages(
    header: Header, body: Buffer, *, max_gfn: int, max_count: int = DEFAULT_MAX_COUNT
) -> PageBatch:
    """Validate a PAGES body and return its batch, page arrays viewing *body* where possible.

    Raise ``UnexpectedMessage`` if *header* is not PAGES, and the errors listed
    in the module table for a bad body; nothing is returned unless every gfn,
    kind and length has been checked.
    """
    if header.type != MsgType.PAGES:
        raise UnexpectedMessage(f"expected PAGES, got {_type_name(header.type)}")
    body = memoryview(body).cast("B")
    size = len(body)
    if size < _PAGES_PREFIX.size:
        raise TruncatedMessage(f"PAGES body of {size} bytes has no count")
    count, reserved = _PAGES_PREFIX.unpack_from(body, 0)
    if reserved:
        raise ReservedBitsSet(f"PAGES reserved word is {reserved:#x}")
    if count > max_count:
        raise MessageTooLarge(f"batch of {count} pages exceeds {max_count}")
    layout = pages_layout(count)
    if size < layout.payload:
        raise TruncatedMessage(
            f"{count}-page batch needs {layout.payload} bytes of metadata, got {size}"
        )
    if any(body[layout.padding : layout.payload]):
        raise ReservedBitsSet("non-zero padding after the kinds array")

    gfns = np.frombuffer(body, _GFN_DTYPE, count, layout.gfns)
    kinds = np.frombuffer(body, np.uint8, count, layout.kinds)
    _check_gfns(gfns, max_gfn)
    top = int(kinds.max()) if count else PageKind.NORMAL
    if top > PageKind.ZERO:
        i = int(np.argmax(kinds > PageKind.ZERO))
        raise BadPageKind(f"page {i} (gfn {int(gfns[i])}) has kind {int(kinds[i])}")
    n_zero = int(np.count_nonzero(kinds)) if top else 0
    if n_zero in (0, count):  # all NORMAL or all ZERO (the usual batch): views, no selection
        normal_gfns, zero_gfns = (gfns, gfns[:0]) if not n_zero else (gfns[:0], gfns)
    else:
        is_normal = kinds == PageKind.NORMAL
        normal_gfns = gfns[is_normal]
        zero_gfns = gfns[~is_normal]
    n_normal = normal_gfns.shape[0]

    compressed = bool(header.flags & FLAG_LZ4)
    raw = _payload(body[layout.payload :], n_normal * PAGE_SIZE, compressed)
    pages = np.frombuffer(raw, np.uint8, n_normal * PAGE_SIZE).reshape(n_normal, PAGE_SIZE)
    return PageBatch(header.pass_no, gfns, kinds, normal_gfns, zero_gfns, pages, compressed)


def _check_gfns(gfns: np.ndarray, max_gfn: int) -> None:
    if not gfns.shape[0]:
        return
    # The source sends each batch in ascending order: then no gfn repeats and the last is
    # the largest, so no sort is needed (any other order is checked the long way).
    ascending = bool((gfns[1:] > gfns[:-1]).all())
    if int(gfns[-1] if ascending else gfns.max()) >= max_gfn:
        bad = int(gfns[np.argmax(gfns >= max_gfn)])
        raise GfnOutOfRange(f"gfn {bad} is outside guest memory of {max_gfn} pages")
    if ascending:
        return
    ordered = np.sort(gfns)
    dup = ordered[1:] == ordered[:-1]
    if dup.any():
        raise DuplicateGfn(f"gfn {int(ordered[1:][dup][0])} appears twice in one batch")


def _payload(payload: memoryview, expected: int, compressed: bool) -> Buffer:
    """Return the raw NORMAL-page bytes of a batch, decompressing at most *expected* bytes."""
    if not compressed:
        if len(payload) != expected:
            raise PayloadLengthMismatch(
                f"payload is {len(payload)} bytes, NORMAL pages need {expected}"
            )
        return payload
    if len(payload) < _U32.size:
        raise PayloadLengthMismatch(f"lz4 payload of {len(payload)} bytes has no raw size")
    (declared,) = _U32.unpack_from(payload, 0)
    if declared != expected:
        raise DecompressedSizeMismatch(
            f"lz4 declares {declared} bytes, NORMAL pages need {expected}"
        )
    try:
        raw = lz4.block.decompress(payload[_U32.size :], uncompressed_size=expected)
    except (lz4.block.LZ4BlockError, ValueError) as exc:
        raise DecompressedSizeMismatch(
            f"lz4 data does not expand to {expected} bytes: {exc}"
        ) from None
    if len(raw) != expected:
        raise DecompressedSizeMismatch(f"lz4 data expands to {len(raw)} bytes, expected {expected}")
    return raw


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def decode_control(header: Header, body: Buffer) -> dict[str, Any]:
    """Parse a control body into a dict; field checks are the receiver's.

    Raise ``UnexpectedMessage`` if *header* is not a control type, and
    ``BadControlMessage`` for bad UTF-8, bad JSON (NaN and Infinity included),
    nesting too deep to parse, or a value that is not an object.
    """
    if header.type not in CONTROL_TYPES:
        raise UnexpectedMessage(f"expected a control message, got {_type_name(header.type)}")
    name = _type_name(header.type)
    try:
        obj = json.loads(bytes(body).decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise BadControlMessage(f"{name} body is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise BadControlMessage(f"{name} body is a {type(obj).__name__}, not an object")
    return obj


def decode_device_state(header: Header, body: Buffer) -> bytes:
    """Return a DEVICE_STATE body. Raise ``UnexpectedMessage`` for any other type."""
    if header.type != MsgType.DEVICE_STATE:
        raise UnexpectedMessage(f"expected DEVICE_STATE, got {_type_name(header.type)}")
    return bytes(body)


def decode_digests(header: Header, body: Buffer, *, npages: int) -> np.ndarray:
    """Return the u64 digest per page. Raise ``UnexpectedMessage`` for another type and
    ``PayloadLengthMismatch`` unless there is exactly one digest per guest page."""
    if header.type != MsgType.PAGE_DIGESTS:
        raise UnexpectedMessage(f"expected PAGE_DIGESTS, got {_type_name(header.type)}")
    if len(body) != 8 * npages:
        raise PayloadLengthMismatch(
            f"PAGE_DIGESTS body is {len(body)} bytes, expected {8 * npages} for {npages} pages"
        )
    return np.frombuffer(body, _GFN_DTYPE, npages)


# -- framing --------------------------------------------------------------------------------


async def read_frames(reader: ByteReader, *, max_body: int) -> AsyncIterator[tuple[Header, bytes]]:
    """Yield validated (header, body) frames from a stream until a clean EOF.

    EOF exactly between frames ends the iteration; EOF anywhere else raises
    ``TruncatedMessage``. A bad header raises before its body is read, so an
    oversized length never makes us buffer it.
    """
    while True:
        try:
            head = await reader.readexactly(HEADER_SIZE)
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                return
            raise TruncatedMessage(
                f"stream ended {len(exc.partial)} bytes into a {HEADER_SIZE}-byte header"
            ) from None
        header = parse_header(head, max_body)
        try:
            body = await reader.readexactly(header.length) if header.length else b""
        except asyncio.IncompleteReadError as exc:
            raise TruncatedMessage(
                f"stream ended {len(exc.partial)} bytes into a "
                f"{header.length}-byte {_type_name(header.type)} body"
            ) from None
        yield header, body
