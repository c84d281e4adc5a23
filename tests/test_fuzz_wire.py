"""Property-based fuzz of the destination's endpoints: whatever bytes a peer sends.

tests/test_wire.py fuzzes the decoders alone; this drives the whole
destination (aiohttp, middlewares, page channels, receiver) on a real
loopback socket with hypothesis-made bodies: valid streams with bytes
flipped, cut, inserted or repeated; sequences of frames with random header
fields; raw bytes. For every body:

- the answer is a success or a refusal with a known code, never a 500, and a
  refusal is one log line and leaves nothing in progress;
- a guest resumes only if the memory received equals the source's, page for
  page (a mutated page that slips through must fail verification);
- the destination takes the next migration.

The normal run is bounded (PRECOPY_FUZZ_EXAMPLES examples per test, default
100, a few seconds); for a long run, raise it:

    PRECOPY_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest tests/test_fuzz_wire.py
"""

from __future__ import annotations

import asyncio
import json
import logging
import os

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from migrate import wire
from migrate.dest.server import RECEIVER, make_app
from migrate.errors import ProtocolError
from tests import wire_oracle as oracle
from tests.peers import (
    complete_body,
    end_frame,
    guest_image,
    hello_frame,
    pages_body,
    pages_frame,
    pass_body,
    raw_frame,
    send_upgraded,
)

EXAMPLES = int(os.environ.get("PRECOPY_FUZZ_EXAMPLES", "100"))
NPAGES = 16
MAX_MEMORY_PAGES = 64


def _memory() -> np.ndarray:
    memory = guest_image(NPAGES, seed=3)
    memory[1::4] = np.frombuffer(b"precopy " * 512, np.uint8)  # pages lz4 shrinks
    return memory


MEMORY = _memory()
VALID_PASS = pass_body(1, MEMORY)
VALID_PASS_LZ4 = (pages_frame(1, MEMORY, np.arange(NPAGES), compress=True)
                  + end_frame(1, NPAGES))
VALID_COMPLETE = complete_body(1, MEMORY)
assert wire.HEADER.unpack_from(VALID_PASS_LZ4)[3] & wire.FLAG_LZ4


def _codes(cls: type[ProtocolError]) -> set[str]:
    return {cls.code}.union(*(_codes(sub) for sub in cls.__subclasses__()))


KNOWN_CODES = _codes(ProtocolError)

# ---------------------------------------------------------------- bodies


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    """`base` with 1 to 4 byte-level mutations, most of them in the headers and metadata."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        end = max(len(data) - 1, 0)
        region = draw(st.sampled_from(["head", "tail", "anywhere"]))
        if region == "head":  # header, count, gfns, kinds
            pos = draw(st.integers(0, min(200, end)))
        elif region == "tail":  # END_OF_PASS or COMPLETE
            pos = draw(st.integers(max(end - 80, 0), end))
        else:
            pos = draw(st.integers(0, end))
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "repeat"]))
        if kind == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=24))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 64))]
        elif kind == "repeat":
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 64))]
    return bytes(data)


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """Zero to four frames with random header fields and plausible or random bodies."""
    out = []
    for _ in range(draw(st.integers(0, 4))):
        gfns = draw(st.lists(st.integers(0, NPAGES + 2), max_size=4))
        kinds = draw(st.lists(st.integers(0, 2), min_size=len(gfns), max_size=len(gfns)))
        payload = b"\x07" * (wire.PAGE_SIZE * draw(st.integers(0, 2)))
        body = draw(st.one_of(
            st.binary(max_size=48),
            st.just(pages_body(gfns, kinds, payload)),
            st.dictionaries(st.sampled_from(["pages", "channel", "channels", "page-size",
                                             "memory-pages"]),
                            st.integers(-2, NPAGES + 2), max_size=3)
            .map(lambda d: json.dumps(d).encode()),
        ))
        length = draw(st.one_of(st.just(len(body)), st.integers(0, 1 << 32 - 1)))
        out.append(raw_frame(
            draw(st.integers(0, 9)), draw(st.sampled_from([0, 1, 2, 7, 0xFFFF_FFFF])), body,
            flags=draw(st.sampled_from([0, 0, wire.FLAG_LZ4, 0x0100])),
            version=draw(st.sampled_from([wire.VERSION] * 5 + [0, 2])), length=length))
    return b"".join(out)


PASS_BODIES = st.one_of(mutated(VALID_PASS), mutated(VALID_PASS_LZ4), frames(),
                        st.binary(max_size=256))
HELLO_BODIES = st.one_of(mutated(hello_frame(NPAGES)), frames(), st.binary(max_size=64))
COMPLETE_BODIES = st.one_of(mutated(VALID_COMPLETE), frames(), st.binary(max_size=64))

# ---------------------------------------------------------------- the destination


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Served:
    """The destination application on 127.0.0.1, on an event loop of its own, served as
    `precopy dest` serves it; `run(coro)` drives one example to its end."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.app = make_app(max_memory_pages=MAX_MEMORY_PAGES)
        self.receiver = self.app[RECEIVER]
        self.log = Records()
        for name in ("precopy", "aiohttp"):
            logging.getLogger(name).addHandler(self.log)
        self.run(self._start())

    async def _start(self) -> None:
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        host, port = self.runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        self.http = aiohttp.ClientSession()

    def run(self, coro):
        return self.loop.run_until_complete(asyncio.wait_for(coro, 30))

    def example(self, coro) -> None:
        """Run one example; whatever it ends with, the next starts on an idle destination."""
        try:
            self.run(coro)
            assert not [r for r in self.log.records if r.levelno >= logging.ERROR], \
                [r.getMessage() for r in self.log.records]
            assert self.receiver.current is None
        finally:
            if self.receiver.current is not None:
                self.receiver.finish(self.receiver.current, ok=False, why="the test's cleanup")
            self.log.records.clear()

    def close(self) -> None:
        async def stop() -> None:
            await self.http.close()
            await self.runner.cleanup()

        self.run(stop())
        self.loop.close()
        for name in ("precopy", "aiohttp"):
            logging.getLogger(name).removeHandler(self.log)

    async def post(self, path: str, body: bytes) -> tuple[int, dict]:
        async with self.http.post(self.url + path, data=body) as resp:
            text = await resp.text()
            assert resp.content_type == "application/json", (resp.status, text)
            return resp.status, json.loads(text)

    async def hello(self) -> str:
        status, answer = await self.post("/migrations", hello_frame(NPAGES))
        assert status == 201, answer
        return answer["id"]

    async def settled(self, incoming, logged: int) -> tuple[int, str | None]:
        """After a lost answer: (200, None) if the pass was taken, else the refusal's code
        as the log line says it."""
        for _ in range(200):
            if self.receiver.current is None and len(self.log.records) > logged:
                message = self.log.records[logged].getMessage()
                return 400, next((c for c in KNOWN_CODES if f": {c}: " in message), message)
            if self.receiver.current is incoming and incoming.passes_ended:
                return 200, None
            await asyncio.sleep(0.005)
        raise AssertionError("the destination neither took nor refused the stream")

    def check_refusal(self, status: int, code: str | None, logged: int) -> None:
        """A refusal: a client error with a known code, one log line, nothing in progress."""
        assert 400 <= status < 500 and code in KNOWN_CODES, (status, code)
        assert self.receiver.current is None
        assert len(self.log.records) == logged + 1, [r.getMessage() for r in self.log.records]



@pytest.fixture(scope="module")
def served():
    server = Served()
    yield server
    server.close()


FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 100, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.parametrize("via", ["chunked", "upgraded"])
def test_fuzz_page_stream(served, via):
    async def case(body: bytes) -> None:
        migration_id = await served.hello()
        incoming = served.receiver.current
        path = f"/migrations/{migration_id}/pass/1"
        logged = len(served.log.records)
        if via == "chunked":
            status, answer = await served.post(path, body)
            code = answer.get("error")
        else:
            status, code = await send_upgraded(served.url, path, body)
            if status is None:  # the answer was lost to a reset: the destination's state tells
                status, code = await served.settled(incoming, logged)
        if status != 200:
            served.check_refusal(status, code, logged)
            return
        # Accepted (a flip in a page's content passes every check): the source's digests
        # decide. Resumed only with every page equal to the source's.
        status, answer = await served.post(f"/migrations/{migration_id}/complete",
                                           VALID_COMPLETE)
        assert status == 200, answer
        assert answer["verified"] == np.array_equal(incoming.memory, MEMORY)
        assert served.receiver.current is None

    @FUZZ
    @given(body=PASS_BODIES)
    def check(body: bytes) -> None:
        served.example(case(body))

    check()


def test_fuzz_hello(served):
    async def case(body: bytes) -> None:
        logged = len(served.log.records)
        status, answer = await served.post("/migrations", body)
        if status == 201:
            incoming = served.receiver.current
            assert 1 <= incoming.npages <= MAX_MEMORY_PAGES
            async with served.http.delete(f"{served.url}/migrations/{answer['id']}") as resp:
                assert resp.status == 200
            served.log.records[logged:] = []  # the cancel's line
        else:
            served.check_refusal(status, answer.get("error"), logged)

    @FUZZ
    @given(body=HELLO_BODIES)
    def check(body: bytes) -> None:
        served.example(case(body))

    check()


def test_fuzz_complete(served):
    async def case(body: bytes) -> None:
        migration_id = await served.hello()
        incoming = served.receiver.current
        status, _ = await served.post(f"/migrations/{migration_id}/pass/1", VALID_PASS)
        assert status == 200
        logged = len(served.log.records)
        status, answer = await served.post(f"/migrations/{migration_id}/complete", body)
        if status == 200:  # a mutation that left the digests alone: must verify
            assert answer["verified"] == np.array_equal(page_digests_of(body), page_digests_of(
                VALID_COMPLETE))
            assert answer["verified"] is False or np.array_equal(incoming.memory, MEMORY)
        else:
            served.check_refusal(status, answer.get("error"), logged)

    @FUZZ
    @given(body=COMPLETE_BODIES)
    def check(body: bytes) -> None:
        served.example(case(body))

    check()


def page_digests_of(body: bytes) -> np.ndarray:
    """The PAGE_DIGESTS a (well-formed) COMPLETE body carries."""
    for header, frame in oracle.split_frames(body, max_body=1 << 20):
        if header.type == wire.MsgType.PAGE_DIGESTS:
            return np.frombuffer(frame, "<u8")
    raise AssertionError("no PAGE_DIGESTS")


def test_still_migrates_after_the_fuzz(served):
    async def case() -> None:
        migration_id = await served.hello()
        assert (await served.post(f"/migrations/{migration_id}/pass/1", VALID_PASS))[0] == 200
        status, answer = await served.post(f"/migrations/{migration_id}/complete",
                                           VALID_COMPLETE)
        assert status == 200 and answer["verified"] is True

    served.example(case())
