"""Wire format: round trips, one crafted input per validation error, and fuzzing.

Bad frames are built here with ``struct`` from the documented layout, not with
the encoder, so the tests pin the format rather than the implementation.
"""

from __future__ import annotations

import asyncio
import json
import struct

import lz4.block
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from migrate import errors, wire
from migrate.wire import FLAG_LZ4, PAGE_SIZE, MsgType
from tests import wire_oracle as oracle

MAX_BODY = 1 << 22
NPAGES = 512


def make_memory(seed: int = 0, npages: int = NPAGES) -> np.ndarray:
    """Guest memory with random, zero, and compressible (mostly zero) pages."""
    rng = np.random.default_rng(seed)
    mem = rng.integers(0, 256, (npages, PAGE_SIZE), dtype=np.uint8)
    mem[::3] = 0
    mem[1::5, 64:] = 0
    return mem


def raw_frame(
    msg_type: int,
    body: bytes,
    *,
    flags: int = 0,
    pass_no: int = 0,
    version: int = 1,
    magic: bytes = b"PCPY",
    length: int | None = None,
) -> bytes:
    n = len(body) if length is None else length
    return struct.pack("<4sBBHII", magic, version, msg_type, flags, pass_no, n) + body


def pages_body(
    gfns: list[int],
    kinds: list[int],
    payload: bytes,
    *,
    count: int | None = None,
    reserved: int = 0,
    pad: bytes | None = None,
) -> bytes:
    n = len(gfns)
    head = struct.pack("<II", n if count is None else count, reserved)
    meta = head + struct.pack(f"<{n}Q", *gfns) + bytes(kinds)
    if pad is None:
        pad = bytes(-n % 8)
    return meta + pad + payload


def pages_header(length: int, flags: int = 0, pass_no: int = 0) -> wire.Header:
    return wire.Header(MsgType.PAGES, flags, pass_no, length)


def decode_body(body: bytes, *, flags: int = 0, max_gfn: int = NPAGES, **kw) -> wire.PageBatch:
    return wire.decode_pages(pages_header(len(body), flags), body, max_gfn=max_gfn, **kw)


def roundtrip(mem: np.ndarray, gfns: np.ndarray, *, compress: bool, pass_no: int = 3):
    frame = wire.encode_gathered(pass_no, mem, gfns, compress=compress)
    data = oracle.join(frame.parts)
    assert len(data) == frame.nbytes
    assert data == oracle.encode_pages(pass_no, gfns, mem[gfns.astype(np.intp)],
                                       compress=compress)
    [(header, body)] = list(oracle.split_frames(data, MAX_BODY))
    assert header.length == frame.nbytes - wire.HEADER_SIZE
    return frame, wire.decode_pages(header, body, max_gfn=mem.shape[0])


def assert_batch_matches(batch: wire.PageBatch, mem: np.ndarray, gfns: np.ndarray) -> None:
    assert np.array_equal(batch.gfns, gfns)
    assert np.array_equal(batch.pages, mem[batch.normal_gfns.astype(np.intp)])
    assert not mem[batch.zero_gfns.astype(np.intp)].any()
    assert len(batch.normal_gfns) + len(batch.zero_gfns) == len(gfns)
    assert set(batch.kinds.tolist()) <= {0, 1}


# -- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("content", ["random", "zero", "mixed", "compressible"])
def test_pages_roundtrip(content: str, compress: bool) -> None:
    mem = make_memory()
    rng = np.random.default_rng(1)
    if content == "random":
        mem = rng.integers(0, 256, (NPAGES, PAGE_SIZE), dtype=np.uint8)
    elif content == "zero":
        mem = np.zeros((NPAGES, PAGE_SIZE), np.uint8)
    elif content == "compressible":
        mem = np.zeros((NPAGES, PAGE_SIZE), np.uint8)
        mem[:, :16] = rng.integers(1, 256, (NPAGES, 16), dtype=np.uint8)
    gfns = rng.permutation(NPAGES)[:256].astype(np.uint64)
    frame, batch = roundtrip(mem, gfns, compress=compress)
    assert_batch_matches(batch, mem, gfns)
    assert batch.pass_no == 3
    assert frame.n_pages == 256
    assert frame.n_zero == len(batch.zero_gfns)
    assert frame.n_normal == len(batch.normal_gfns)
    assert frame.payload_raw_bytes == frame.n_normal * PAGE_SIZE
    if content == "zero":
        assert frame.n_normal == 0 and frame.payload_wire_bytes == 0
    if content == "random":
        # lz4 cannot shrink random pages: they must travel raw with the flag clear.
        assert not frame.compressed and not batch.compressed
        assert frame.payload_wire_bytes == frame.payload_raw_bytes
    if compress and content == "compressible":
        assert frame.compressed and batch.compressed
        assert frame.payload_wire_bytes < frame.payload_raw_bytes // 10


def test_empty_batch_roundtrip() -> None:
    mem = make_memory()
    gfns = np.array([], dtype=np.uint64)
    for compress in (False, True):
        frame, batch = roundtrip(mem, gfns, compress=compress)
        assert frame.n_pages == 0 and batch.pages.shape == (0, PAGE_SIZE)


def test_signed_gfns_and_unaligned_counts() -> None:
    mem = make_memory()
    for n in (1, 7, 9, 15):
        gfns = np.arange(n, dtype=np.int64) * 3
        _, batch = roundtrip(mem, gfns, compress=False)
        assert_batch_matches(batch, mem, gfns.astype(np.uint64))


def test_encode_gathered_names_the_bad_gfn() -> None:
    mem = make_memory()
    with pytest.raises(IndexError, match=str(NPAGES)):
        wire.encode_gathered(0, mem, np.array([0, NPAGES]))
    with pytest.raises(IndexError, match="-1"):
        wire.encode_gathered(0, mem, np.array([-1, 0]))
    with pytest.raises(ValueError):
        wire.encode_gathered(0, mem.reshape(-1), np.array([0]))


def test_the_wire_page_is_the_models_4_kib_page() -> None:
    """Version 1 of the format carries 4 KiB pages; the wire takes the model's constant."""
    from vmmodel import PAGE_SIZE as MODEL_PAGE_SIZE

    assert wire.PAGE_SIZE == MODEL_PAGE_SIZE == 4096


def test_pages_layout_is_the_documented_table() -> None:
    for n in (0, 1, 7, 8, 9):
        layout = wire.pages_layout(n)
        assert layout == (8, 8 + 8 * n, 8 + 9 * n, 8 + 8 * n + (n + 7) // 8 * 8)


def test_control_and_device_state_roundtrip() -> None:
    obj = {"memory_bytes": 1 << 32, "name": "gu\u00e9st", "nested": {"a": [1, 2.5, None]}}
    stream = (
        wire.encode_control(MsgType.HELLO, 0, obj)
        + wire.encode_device_state(7, b"\x00\x01cpu")
        + wire.encode_control(MsgType.COMPLETE, 7, {})
    )
    frames = list(oracle.split_frames(stream, MAX_BODY))
    assert [h.type for h, _ in frames] == [MsgType.HELLO, MsgType.DEVICE_STATE, MsgType.COMPLETE]
    assert wire.decode_control(*frames[0]) == obj
    assert wire.decode_device_state(*frames[1]) == b"\x00\x01cpu"
    assert frames[1][0].pass_no == 7
    assert wire.decode_control(*frames[2]) == {}


def test_encode_control_rejects_non_control() -> None:
    with pytest.raises(ValueError):
        wire.encode_control(MsgType.PAGES, 0, {})
    with pytest.raises(ValueError):
        wire.encode_control(MsgType.HELLO, 0, [1])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        wire.encode_control(MsgType.HELLO, 0, {"x": float("nan")})


# -- header validation ----------------------------------------------------------------------


def test_bad_magic() -> None:
    with pytest.raises(errors.BadMagic):
        wire.parse_header(raw_frame(MsgType.HELLO, b"{}", magic=b"PCPX"), MAX_BODY)


def test_unsupported_version_names_both() -> None:
    with pytest.raises(errors.UnsupportedVersion, match=r"version 2.*speaks 1"):
        wire.parse_header(raw_frame(MsgType.HELLO, b"{}", version=2), MAX_BODY)


@pytest.mark.parametrize("msg_type", [0, 9, 255])
def test_unknown_type(msg_type: int) -> None:
    with pytest.raises(errors.UnknownMessageType):
        wire.parse_header(raw_frame(msg_type, b""), MAX_BODY)


@pytest.mark.parametrize(
    "msg_type,flags",
    [
        (MsgType.PAGES, 2),
        (MsgType.PAGES, 0x8000),
        (MsgType.HELLO, FLAG_LZ4),
        (MsgType.DEVICE_STATE, FLAG_LZ4),
    ],
)
def test_reserved_flags(msg_type: int, flags: int) -> None:
    with pytest.raises(errors.ReservedBitsSet):
        wire.parse_header(raw_frame(msg_type, b"", flags=flags), MAX_BODY)


def test_body_too_large() -> None:
    with pytest.raises(errors.MessageTooLarge) as info:
        wire.parse_header(raw_frame(MsgType.PAGES, b"", length=MAX_BODY + 1), MAX_BODY)
    assert info.value.status == 413
    header = wire.parse_header(raw_frame(MsgType.PAGES, b"", length=MAX_BODY), MAX_BODY)
    assert header.length == MAX_BODY


def test_header_fields() -> None:
    header = wire.parse_header(raw_frame(MsgType.END_OF_PASS, b"{}", pass_no=2**32 - 1), 10)
    assert header == wire.Header(MsgType.END_OF_PASS, 0, 2**32 - 1, 2)


# -- truncation at every boundary -----------------------------------------------------------


def sample_stream() -> tuple[bytes, set[int], list[int]]:
    """Three frames, the offsets where frames end, and where the PAGES frame's fields start."""
    mem = make_memory()
    gfns = np.array([0, 1, 2, 5, 9], dtype=np.uint64)  # zero, partly zero and random pages
    pages_frame = oracle.join(wire.encode_gathered(1, mem, gfns).parts)
    hello = wire.encode_control(MsgType.HELLO, 0, {"memory_bytes": NPAGES * PAGE_SIZE})
    done = wire.encode_control(MsgType.COMPLETE, 1, {"ok": True})
    stream = hello + pages_frame + done
    frame_ends = {len(hello), len(hello) + len(pages_frame)}
    n = len(gfns)
    body = len(hello) + wire.HEADER_SIZE
    fields = [body + 4, body + 8, body + 8 + 8 * n, body + 8 + 9 * n, body + 8 + 8 * n + 8]
    boundaries = set(range(1, wire.HEADER_SIZE + 1)) | frame_ends | set(fields)
    boundaries |= {body - 1, body + 1, len(stream) - 1}
    return stream, frame_ends, sorted(boundaries)


def test_the_oracle_splitter_sees_truncation_everywhere() -> None:
    stream, frame_ends, _ = sample_stream()
    for cut in range(1, len(stream)):
        if cut in frame_ends:
            list(oracle.split_frames(stream[:cut], MAX_BODY))  # a clean frame boundary
            continue
        with pytest.raises(errors.TruncatedMessage):
            list(oracle.split_frames(stream[:cut], MAX_BODY))
    assert len(list(oracle.split_frames(stream, MAX_BODY))) == 3


def test_decode_pages_truncated_body() -> None:
    mem = make_memory()
    gfns = np.array([0, 1, 2, 5, 9], dtype=np.uint64)
    frame = wire.encode_gathered(1, mem, gfns)
    body = oracle.join(frame.parts)[wire.HEADER_SIZE :]
    meta_end = 8 + 8 * 5 + 8
    for cut in range(len(body)):
        expected = errors.TruncatedMessage if cut < meta_end else errors.PayloadLengthMismatch
        with pytest.raises(expected):
            decode_body(body[:cut])


# -- PAGES body validation ------------------------------------------------------------------


def test_gfn_out_of_range_names_first_bad() -> None:
    body = pages_body([1, NPAGES + 5, NPAGES], [1, 1, 1], b"")
    with pytest.raises(errors.GfnOutOfRange, match=f"gfn {NPAGES + 5} "):
        decode_body(body)
    with pytest.raises(errors.GfnOutOfRange, match=str(2**64 - 1)):
        decode_body(pages_body([2**64 - 1], [1], b""))


def test_duplicate_gfn() -> None:
    with pytest.raises(errors.DuplicateGfn, match="gfn 7 "):
        decode_body(pages_body([7, 3, 7], [1, 1, 1], b""))


def test_bad_kind() -> None:
    with pytest.raises(errors.BadPageKind, match="kind 2"):
        decode_body(pages_body([1, 2], [1, 2], b""))


def test_reserved_word_and_padding() -> None:
    with pytest.raises(errors.ReservedBitsSet):
        decode_body(pages_body([1], [1], b"", reserved=1))
    with pytest.raises(errors.ReservedBitsSet):
        decode_body(pages_body([1], [1], b"", pad=b"\x00" * 6 + b"\x01"))


def test_count_above_max() -> None:
    body = pages_body(list(range(10)), [1] * 10, b"")
    with pytest.raises(errors.MessageTooLarge):
        decode_body(body, max_count=9)
    assert len(decode_body(body, max_count=10).zero_gfns) == 10
    with pytest.raises(errors.MessageTooLarge):  # a huge count is refused before any sizing
        decode_body(pages_body([1], [1], b"", count=2**32 - 1))


def test_count_larger_than_body() -> None:
    with pytest.raises(errors.TruncatedMessage):
        decode_body(pages_body([1, 2], [1, 1], b"", count=3))


@pytest.mark.parametrize("delta", [-4096, -1, 1, 4096])
def test_payload_length_mismatch(delta: int) -> None:
    payload = bytes(range(256)) * 32  # two normal pages
    payload = payload + bytes(max(delta, 0)) if delta > 0 else payload[:delta]
    with pytest.raises(errors.PayloadLengthMismatch):
        decode_body(pages_body([1, 2, 3], [0, 1, 0], payload))


def lz4_body(raw: bytes, declared: int | None = None, *, n_normal: int = 2) -> bytes:
    packed = lz4.block.compress(raw, store_size=False)
    size = len(raw) if declared is None else declared
    return pages_body(list(range(n_normal)), [0] * n_normal, struct.pack("<I", size) + packed)


def test_lz4_valid() -> None:
    raw = bytes(2 * PAGE_SIZE)
    batch = decode_body(lz4_body(raw), flags=FLAG_LZ4)
    assert batch.compressed and batch.pages.shape == (2, PAGE_SIZE) and not batch.pages.any()


@pytest.mark.parametrize("declared", [2 * PAGE_SIZE + 1, 2**32 - 1, 2 * PAGE_SIZE - 1, 0])
def test_lz4_declared_size_wrong(declared: int, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decompress(*args, **kwargs):
        raise AssertionError("decompressed despite a wrong declared size")

    monkeypatch.setattr(lz4.block, "decompress", no_decompress)
    body = lz4_body(bytes(2 * PAGE_SIZE), declared)
    with pytest.raises(errors.DecompressedSizeMismatch):
        decode_body(body, flags=FLAG_LZ4)


def test_lz4_expands_short_or_long() -> None:
    # Declared size matches the page count, but the data itself expands to less or more.
    for actual in (2 * PAGE_SIZE - 1, PAGE_SIZE, 2 * PAGE_SIZE + 1, 3 * PAGE_SIZE):
        packed = lz4.block.compress(bytes(actual), store_size=False)
        body = pages_body([1, 2], [0, 0], struct.pack("<I", 2 * PAGE_SIZE) + packed)
        with pytest.raises(errors.DecompressedSizeMismatch):
            decode_body(body, flags=FLAG_LZ4)


@pytest.mark.parametrize(
    "blob", [b"", b"\xff" * 64, b"\x00", lz4.block.compress(bytes(8192), store_size=False)[:-3]]
)
def test_lz4_garbage(blob: bytes) -> None:
    body = pages_body([1, 2], [0, 0], struct.pack("<I", 2 * PAGE_SIZE) + blob)
    with pytest.raises(errors.DecompressedSizeMismatch):
        decode_body(body, flags=FLAG_LZ4)


def test_lz4_payload_without_size_word() -> None:
    with pytest.raises(errors.PayloadLengthMismatch):
        decode_body(pages_body([1], [0], b"\x00\x10"), flags=FLAG_LZ4)


def test_decoders_reject_wrong_type() -> None:
    hello = wire.Header(MsgType.HELLO, 0, 0, 2)
    with pytest.raises(errors.UnexpectedMessage):
        wire.decode_pages(hello, b"{}", max_gfn=1)
    with pytest.raises(errors.UnexpectedMessage):
        wire.decode_control(pages_header(0), b"")
    with pytest.raises(errors.UnexpectedMessage):
        wire.decode_device_state(hello, b"{}")


# -- control validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe{}",
        b"{",
        b"",
        b"[1, 2]",
        b"42",
        b'"s"',
        b"null",
        b'{"x": NaN}',
        b'{"x": -Infinity}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a": 1' + b"0" * 5000 + b"}",
        '{"x": 1}'.encode("utf-16"),
    ],
)
def test_bad_control(body: bytes) -> None:
    header = wire.Header(MsgType.END_OF_PASS, 0, 0, len(body))
    with pytest.raises(errors.BadControlMessage):
        wire.decode_control(header, body)


# -- read_frames over a stream --------------------------------------------------------------


async def collect(data: bytes, *, chunk: int = 7, max_body: int = MAX_BODY):
    reader = asyncio.StreamReader()
    for i in range(0, len(data), chunk):
        reader.feed_data(data[i : i + chunk])
    reader.feed_eof()
    return [(h, bytes(b)) async for h, b in wire.read_frames(reader, max_body=max_body)]


@pytest.mark.asyncio
async def test_read_frames_matches_the_oracle_splitter() -> None:
    stream, _, _ = sample_stream()
    got = await collect(stream, chunk=1000)
    want = [(h, bytes(b)) for h, b in oracle.split_frames(stream, MAX_BODY)]
    assert got == want
    assert await collect(b"") == []


@pytest.mark.asyncio
async def test_read_frames_truncated_at_every_boundary() -> None:
    stream, frame_ends, boundaries = sample_stream()
    for cut in boundaries:
        if cut in frame_ends:
            assert len(await collect(stream[:cut])) == sorted(frame_ends).index(cut) + 1
            continue
        with pytest.raises(errors.TruncatedMessage):
            await collect(stream[:cut])


@pytest.mark.asyncio
async def test_read_frames_rejects_header_before_body() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(raw_frame(MsgType.PAGES, b"", length=MAX_BODY + 1))  # no body follows
    with pytest.raises(errors.MessageTooLarge):
        async for _ in wire.read_frames(reader, max_body=MAX_BODY):
            pass


# -- errors module --------------------------------------------------------------------------


def all_error_classes() -> list[type[errors.ProtocolError]]:
    return [
        c
        for c in vars(errors).values()
        if isinstance(c, type)
        and issubclass(c, errors.ProtocolError)
        and c is not errors.ProtocolError
    ]


def test_error_classes_have_codes_and_statuses() -> None:
    classes = all_error_classes()
    assert len(classes) >= 16
    codes = [c.code for c in classes]
    assert len(set(codes)) == len(codes)
    assert all(c.__doc__ and c.__doc__.startswith("Raised") for c in classes)
    assert errors.MessageTooLarge.status == 413 and errors.PassOutOfOrder.status == 409
    assert errors.Unauthorized.status == 401 and errors.GfnOutOfRange.status == 400
    err = errors.UnsupportedVersion("peer speaks 2")
    assert errors.to_json(err) == {"error": "unsupported-version", "detail": "peer speaks 2"}
    assert json.dumps(errors.to_json(err))


# -- fuzzing --------------------------------------------------------------------------------


def consume(buf: bytes) -> None:
    """Decode a byte stream like the destination does; only ProtocolError may escape."""
    try:
        for header, body in oracle.split_frames(buf, 1 << 20):
            if header.type == MsgType.PAGES:
                wire.decode_pages(header, body, max_gfn=64, max_count=64)
            elif header.type == MsgType.DEVICE_STATE:
                wire.decode_device_state(header, body)
            else:
                wire.decode_control(header, body)
    except errors.ProtocolError:
        pass


def valid_stream() -> bytes:
    mem = make_memory(npages=64)
    mem[40:] = 0
    mem[40:, :8] = 1  # compressible
    gfns = np.array([3, 0, 41, 1, 42, 7, 43], dtype=np.uint64)
    return b"".join(
        [
            wire.encode_control(MsgType.HELLO, 0, {"memory_bytes": 64 * 4096, "v": [1, "x"]}),
            oracle.join(wire.encode_gathered(1, mem, gfns).parts),
            oracle.join(wire.encode_gathered(1, mem, gfns[2:], compress=True).parts),
            wire.encode_device_state(1, b"regs"),
            wire.encode_control(MsgType.END_OF_PASS, 1, {"pages": 7}),
        ]
    )


VALID = valid_stream()
FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])


def test_valid_stream_is_valid() -> None:
    frames = list(oracle.split_frames(VALID, 1 << 20))
    assert frames[2][0].flags == FLAG_LZ4
    consume(VALID)


@FUZZ
@given(st.binary(max_size=4096))
def test_fuzz_random_bytes(data: bytes) -> None:
    consume(data)
    consume(VALID[: wire.HEADER_SIZE] + data)


@FUZZ
@given(st.binary(max_size=2048))
def test_fuzz_random_bodies(data: bytes) -> None:
    for flags in (0, FLAG_LZ4):
        try:
            decode_body(data, flags=flags, max_gfn=64, max_count=64)
        except errors.ProtocolError:
            pass
    try:
        wire.decode_control(wire.Header(MsgType.HELLO, 0, 0, len(data)), data)
    except errors.ProtocolError:
        pass


@FUZZ
@given(
    st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=8),
    st.integers(0, len(VALID)),
    st.binary(max_size=16),
)
def test_fuzz_mutated_frames(flips: list[tuple[int, int]], cut: int, junk: bytes) -> None:
    buf = bytearray(VALID)
    for pos, value in flips:
        buf[pos] = value
    consume(bytes(buf))
    consume(bytes(buf[:cut]) + junk + bytes(buf[cut:]))
    consume(bytes(buf[:cut]))


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(st.data())
def test_fuzz_roundtrip(data: st.DataObject) -> None:
    mem = make_memory(npages=128)
    n = data.draw(st.integers(0, 64))
    gfns = np.array(data.draw(st.permutations(range(128)))[:n], dtype=np.uint64)
    compress = data.draw(st.booleans())
    _, batch = roundtrip(mem, gfns, compress=compress)
    assert_batch_matches(batch, mem, gfns)


def test_digests_round_trip_and_length_checked() -> None:
    digests = np.arange(5, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    (header, body), = oracle.split_frames(wire.encode_digests(3, digests), MAX_BODY)
    assert header.type == MsgType.PAGE_DIGESTS and header.pass_no == 3
    assert np.array_equal(wire.decode_digests(header, body, npages=5), digests)
    with pytest.raises(errors.PayloadLengthMismatch):
        wire.decode_digests(header, body, npages=6)
