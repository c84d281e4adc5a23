"""Bad input at the destination: crafted bytes sent with aiohttp to a real `precopy dest`.

Whatever arrives, the destination answers with a clear error (its status and
a stable code), logs one line, discards the migration concerned, never
resumes a guest from it, and stays up for the next migration. The one
process serves the whole module; the last test migrates through it.

The races around COMPLETE (pages, a second COMPLETE, or the source leaving
while the destination verifies) hold the verification until the test lets
it go, so they run the application in-process on a real loopback socket.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import socket
import struct
import threading
from pathlib import Path

import aiohttp
import lz4.block
import numpy as np
import pytest
from aiohttp import web

from migrate import wire
from migrate.dest.receiver import Receiver
from migrate.dest.server import make_app
from tests.peers import (
    LoggedDestination,
    complete_body,
    end_frame,
    guest_image,
    hello_frame,
    pages_body,
    pages_frame,
    pass_body,
    raw_frame,
    send_upgraded,
    wait_until,
)
from tests.procs import SMALL, precopy

NPAGES = 256
MAX_MEMORY_PAGES = 1024  # the destination's --max-memory, 4 MiB
MEMORY = guest_image(NPAGES)
T = wire.MsgType
ONE = pages_frame(1, MEMORY, [1])  # one NORMAL page (gfn 1) in pass 1
END = end_frame(1, 1)
UPGRADE_RESET = -1  # the answer was lost to a reset: see peers.send_upgraded


def _lz4(pages: np.ndarray, declared: int) -> bytes:
    return struct.pack("<I", declared) + lz4.block.compress(pages.tobytes(), store_size=False)


# ---------------------------------------------------------------- the peer


@pytest.fixture(scope="module")
def dest():
    with LoggedDestination("--max-memory", f"{MAX_MEMORY_PAGES * 4}KiB") as d:
        yield d


class Peer:
    """A hand-driven source: sends crafted bodies, reads answers and the log lines they caused."""

    _sentinels = itertools.count()

    def __init__(self, dest: LoggedDestination, http: aiohttp.ClientSession) -> None:
        self.dest, self.http = dest, http

    async def post(self, path: str, body: bytes) -> tuple[int, dict]:
        async with self.http.post(self.dest.url + path, data=body) as resp:
            return resp.status, await resp.json(content_type=None)

    async def hello(self, npages: int = NPAGES) -> str:
        status, answer = await self.post("/migrations", hello_frame(npages))
        assert status == 201, answer
        return answer["id"]

    async def send(self, path: str, body: bytes) -> tuple[int, str | None, list[str]]:
        """POST `body`; return the status, the error code and the log lines it caused."""
        before = await self.log_end()
        status, answer = await self.post(path, body)
        return status, answer.get("error"), await self.log_since(before)

    async def send_upgraded(self, path: str, body: bytes) -> tuple[int, str | None, list[str]]:
        """As `send`, over an upgraded page channel (the source's way)."""
        before = await self.log_end()
        status, code = await send_upgraded(self.dest.url, path, body)
        return UPGRADE_RESET if status is None else status, code, await self.log_since(before)

    async def _sentinel(self, since: int) -> int:
        """Log a known line and wait for it; return its index. The log is one ordered
        stream: whatever was logged before the sentinel's request comes before it."""
        sentinel = f"sentinel{next(self._sentinels)}"
        async with self.http.delete(f"{self.dest.url}/migrations/{sentinel}") as resp:
            assert resp.status == 404
        wait_until(lambda: any(sentinel in line for line in self.dest.lines[since:]), 5,
                   "the sentinel log line")
        lines = self.dest.lines
        return next(i for i in range(since, len(lines)) if sentinel in lines[i])

    async def log_end(self) -> int:
        """Where the lines of the next request will start: after everything logged so far,
        the late lines of an earlier test's clean-up included (the reader is a thread)."""
        return await self._sentinel(0) + 1

    async def log_since(self, before: int) -> list[str]:
        return self.dest.lines[before:await self._sentinel(before)]

    async def assert_discarded(self, migration_id: str, failed_before: int) -> None:
        """Nothing left of it: not busy, one more failure, and COMPLETE cannot resume it."""
        status = self.dest.status()
        assert status["busy"] is False and status["failed"] == failed_before + 1
        code, answer = await self.post(f"/migrations/{migration_id}/complete",
                                       complete_body(1, MEMORY))
        assert (code, answer["error"]) == (404, "unknown-migration")
        assert self.dest.status()["completed"] == status["completed"]


@pytest.fixture
async def peer(dest):
    async with aiohttp.ClientSession() as http:
        assert dest.status()["busy"] is False  # each test starts with an idle destination
        yield Peer(dest, http)
        left = dest.status()["migration"]
        if left is not None:  # clean up for the next test, then fail this one
            async with http.delete(f"{dest.url}/migrations/{left}"):
                pass
            raise AssertionError(f"the test left migration {left} in progress")
    assert dest.proc.poll() is None


def _one_line(lines: list[str], code: str) -> None:
    assert len(lines) == 1, lines
    assert code in lines[0]


# ---------------------------------------------------------------- page streams

STREAMS = {
    # name: (body of POST /pass/1, status, code)
    "wrong-version": (raw_frame(T.PAGES, 1, ONE[16:], version=2), 400, "unsupported-version"),
    "bad-magic": (raw_frame(T.PAGES, 1, ONE[16:], magic=b"QEVM"), 400, "bad-magic"),
    "unknown-type": (raw_frame(42, 1, b""), 400, "unknown-message-type"),
    "undefined-flag": (raw_frame(T.PAGES, 1, ONE[16:], flags=0x80), 400, "reserved-bits-set"),
    "truncated-header": (ONE[:10], 400, "truncated-message"),
    "truncated-body": (ONE[:-100], 400, "truncated-message"),
    "no-end-of-pass": (ONE, 400, "truncated-message"),
    "gfn-out-of-range": (raw_frame(T.PAGES, 1, pages_body([NPAGES], [0], MEMORY[1].tobytes())),
                         400, "gfn-out-of-range"),
    "duplicate-gfn": (raw_frame(T.PAGES, 1, pages_body([3, 3], [0, 0], MEMORY[3:5].tobytes())),
                      400, "duplicate-gfn"),
    "bad-page-kind": (raw_frame(T.PAGES, 1, pages_body([3], [7], b"")), 400, "bad-page-kind"),
    "payload-short": (raw_frame(T.PAGES, 1, pages_body([3], [0], MEMORY[3].tobytes()[:4000])),
                      400, "payload-length-mismatch"),
    "payload-on-a-zero-page": (raw_frame(T.PAGES, 1, pages_body([3], [1], b"x" * 4096)),
                               400, "payload-length-mismatch"),
    "lz4-expands-past-its-size": (
        raw_frame(T.PAGES, 1, pages_body([3], [0], _lz4(MEMORY[3:5], 4096)), flags=wire.FLAG_LZ4),
        400, "decompressed-size-mismatch"),
    "lz4-declares-a-gigabyte": (
        raw_frame(T.PAGES, 1, pages_body([3], [0], _lz4(MEMORY[3:4], 1 << 30)),
                  flags=wire.FLAG_LZ4),
        400, "decompressed-size-mismatch"),
    "lz4-garbage": (raw_frame(T.PAGES, 1, pages_body([3], [0], struct.pack("<I", 4096) + b"\xff"
                                                     * 64), flags=wire.FLAG_LZ4),
                    400, "decompressed-size-mismatch"),
    "end-of-pass-twice": (ONE + END + END, 409, "unexpected-message"),
    "pages-after-end-of-pass": (end_frame(1, 0) + ONE, 409, "unexpected-message"),
    "end-of-pass-miscounts": (ONE + end_frame(1, 5), 400, "bad-control-message"),
    "frame-of-another-pass": (pages_frame(2, MEMORY, [1]) + end_frame(2, 1), 409,
                              "unexpected-message"),
    "hello-in-a-stream": (wire.encode_control(T.HELLO, 1, {}), 409, "unexpected-message"),
    "complete-in-a-stream": (ONE + wire.encode_control(T.COMPLETE, 1, {}), 409,
                             "unexpected-message"),
    "end-of-pass-not-json": (raw_frame(T.END_OF_PASS, 1, b"{pages: 1"), 400,
                             "bad-control-message"),
    "batch-over-the-body-bound": (raw_frame(T.PAGES, 1, b"", length=1 << 30), 413,
                                  "message-too-large"),
    "batch-over-the-page-count": (raw_frame(T.PAGES, 1, struct.pack("<II", 1 << 20, 0)), 413,
                                  "message-too-large"),
    "more-pages-than-the-guest": (pages_frame(1, MEMORY, np.arange(NPAGES))
                                  + pages_frame(1, MEMORY, [5]), 413, "message-too-large"),
}


# An upgraded channel ends at END_OF_PASS: the destination answers and closes, reading
# nothing after it, so what follows END_OF_PASS is never seen there (nor stored).
ENDS_AT_END_OF_PASS = {"end-of-pass-twice", "pages-after-end-of-pass"}


@pytest.mark.parametrize("name,via", [
    (name, via) for name in sorted(STREAMS) for via in ("chunked", "upgraded")
    if not (via == "upgraded" and name in ENDS_AT_END_OF_PASS)
])
async def test_bad_page_stream(peer, name, via):
    body, status, code = STREAMS[name]
    failed = peer.dest.status()["failed"]
    migration_id = await peer.hello()
    send = peer.send if via == "chunked" else peer.send_upgraded
    got, error, lines = await send(f"/migrations/{migration_id}/pass/1", body)
    assert (got, error) == (status, code)  # the refusal reaches the peer: never lost to a reset
    _one_line(lines, code)
    assert f"migration {migration_id}: discarded" in lines[0]
    await peer.assert_discarded(migration_id, failed)


async def test_requests_that_follow_a_discard_log_nothing_more(peer):
    """One line per discard: the source's cancel and its late channels follow from it."""
    failed = peer.dest.status()["failed"]
    migration_id = await peer.hello()
    body, status, code = STREAMS["bad-page-kind"]
    got, error, lines = await peer.send(f"/migrations/{migration_id}/pass/1", body)
    assert (got, error) == (status, code)
    _one_line(lines, code)
    before = await peer.log_end()
    async with peer.http.delete(f"{peer.dest.url}/migrations/{migration_id}") as resp:
        assert (resp.status, (await resp.json())["error"]) == (404, "unknown-migration")
    got, error = await send_upgraded(peer.dest.url, f"/migrations/{migration_id}/pass/1", ONE)
    assert (got, error) == (404, "unknown-migration")
    assert await peer.log_since(before) == []
    await peer.assert_discarded(migration_id, failed)


@pytest.mark.parametrize("path,code", [("/pass/0", "pass-out-of-order"),
                                       ("/pass/x1", "unexpected-message"),
                                       ("/pass/%C2%B2", "unexpected-message"),
                                       ("/pass/%D9%A1", "unexpected-message"),
                                       ("/pass/99999999999", "unexpected-message")])
async def test_bad_pass_number(peer, path, code):
    failed = peer.dest.status()["failed"]
    migration_id = await peer.hello()
    got, error, lines = await peer.send(f"/migrations/{migration_id}{path}", pass_body(1, MEMORY))
    assert (got, error) == (409, code)
    _one_line(lines, code)
    await peer.assert_discarded(migration_id, failed)


async def test_pass_replayed_after_it_ended(peer):
    failed = peer.dest.status()["failed"]
    migration_id = await peer.hello()
    assert (await peer.post(f"/migrations/{migration_id}/pass/1", pass_body(1, MEMORY)))[0] == 200
    got, error, lines = await peer.send(f"/migrations/{migration_id}/pass/1",
                                        pass_body(1, MEMORY))
    assert (got, error) == (409, "pass-out-of-order")
    _one_line(lines, "pass-out-of-order")
    await peer.assert_discarded(migration_id, failed)


async def test_pages_of_an_unknown_migration(peer):
    got, error, lines = await peer.send("/migrations/0123456789ab/pass/1", pass_body(1, MEMORY))
    assert (got, error) == (404, "unknown-migration")
    _one_line(lines, "unknown-migration")


# ---------------------------------------------------------------- hello

HELLOS = {
    "wrong-version": (raw_frame(T.HELLO, 0, hello_frame(NPAGES)[16:], version=9), 400,
                      "unsupported-version"),
    "two-hellos": (hello_frame(NPAGES) * 2, 409, "unexpected-message"),
    "pages-instead": (ONE, 409, "unexpected-message"),
    "empty": (b"", 409, "unexpected-message"),
    "truncated": (hello_frame(NPAGES)[:-3], 400, "truncated-message"),
    "not-json": (raw_frame(T.HELLO, 0, b"\xff\xfe"), 400, "bad-control-message"),
    "page-size": (hello_frame(NPAGES, **{"page-size": 8192}), 400, "bad-control-message"),
    "no-memory": (wire.encode_control(T.HELLO, 0, {"page-size": 4096}), 400,
                  "bad-control-message"),
    "memory-not-a-number": (wire.encode_control(T.HELLO, 0, {"page-size": 4096,
                                                             "memory-pages": "1G"}),
                            400, "bad-control-message"),
    "more-than-max-memory": (hello_frame(MAX_MEMORY_PAGES + 1), 413, "memory-too-large"),
    "body-over-the-bound": (raw_frame(T.HELLO, 0, b"{}", length=2 << 20), 413,
                            "message-too-large"),
}


@pytest.mark.parametrize("name", sorted(HELLOS))
async def test_bad_hello(peer, name):
    body, status, code = HELLOS[name]
    before = peer.dest.status()
    got, error, lines = await peer.send("/migrations", body)
    assert (got, error) == (status, code)
    _one_line(lines, code)
    assert lines[0].startswith("precopy precopy.dest: POST /migrations: ")
    after = peer.dest.status()
    assert after["busy"] is False and after["failed"] == before["failed"]


async def test_max_memory_is_inclusive(peer):
    migration_id = await peer.hello(MAX_MEMORY_PAGES)
    async with peer.http.delete(f"{peer.dest.url}/migrations/{migration_id}") as resp:
        assert resp.status == 200


async def test_second_hello_is_refused_and_the_first_completes(peer):
    migration_id = await peer.hello()
    got, error, lines = await peer.send("/migrations", hello_frame(NPAGES))
    assert (got, error) == (409, "migration-busy")
    _one_line(lines, f"migration {migration_id} is in progress")
    assert peer.dest.status()["migration"] == migration_id
    completed = peer.dest.status()["completed"]
    assert (await peer.post(f"/migrations/{migration_id}/pass/1", pass_body(1, MEMORY)))[0] == 200
    got, answer = await peer.post(f"/migrations/{migration_id}/complete", complete_body(1, MEMORY))
    assert got == 200 and answer["verified"] is True and answer["status"] == "resumed"
    assert peer.dest.status()["completed"] == completed + 1


# ---------------------------------------------------------------- complete

COMPLETES = {
    "out-of-order": (lambda: complete_body(1, MEMORY)[::-1], 400, "bad-magic"),
    "complete-first": (
        lambda: wire.encode_control(T.COMPLETE, 1, {}) + complete_body(1, MEMORY), 409,
        "unexpected-message"),
    "digests-of-another-guest": (lambda: complete_body(1, guest_image(NPAGES - 1)), 400,
                                 "payload-length-mismatch"),
    "truncated": (lambda: complete_body(1, MEMORY)[:-5], 400, "truncated-message"),
    "a-fourth-frame": (lambda: complete_body(1, MEMORY) + END, 409, "unexpected-message"),
}


@pytest.mark.parametrize("name", sorted(COMPLETES))
async def test_bad_complete(peer, name):
    make, status, code = COMPLETES[name]
    failed = peer.dest.status()["failed"]
    migration_id = await peer.hello()
    assert (await peer.post(f"/migrations/{migration_id}/pass/1", pass_body(1, MEMORY)))[0] == 200
    got, error, lines = await peer.send(f"/migrations/{migration_id}/complete", make())
    assert (got, error) == (status, code)
    _one_line(lines, code)
    await peer.assert_discarded(migration_id, failed)


async def test_wrong_memory_is_never_resumed(peer):
    """The source's digests say one page differs: the destination reports it, does not resume."""
    before = peer.dest.status()
    migration_id = await peer.hello()
    sent = MEMORY.copy()
    sent[17, 100] ^= 0xFF  # a lost write
    assert (await peer.post(f"/migrations/{migration_id}/pass/1", pass_body(1, sent)))[0] == 200
    got, answer, lines = await peer.send(f"/migrations/{migration_id}/complete",
                                         complete_body(1, MEMORY))
    assert got == 200  # not a protocol error: the verdict
    status = peer.dest.status()
    assert status["completed"] == before["completed"]
    assert status["failed"] == before["failed"] + 1 and status["busy"] is False
    _one_line(lines, "1 pages differ from the source")


async def test_duplicate_complete(peer):
    migration_id = await peer.hello()
    assert (await peer.post(f"/migrations/{migration_id}/pass/1", pass_body(1, MEMORY)))[0] == 200
    body = complete_body(1, MEMORY)
    got, answer = await peer.post(f"/migrations/{migration_id}/complete", body)
    assert got == 200 and answer["verified"] is True
    completed = peer.dest.status()["completed"]
    got, error, lines = await peer.send(f"/migrations/{migration_id}/complete", body)
    assert (got, error) == (404, "unknown-migration")  # resumed once, not twice
    _one_line(lines, "unknown-migration")
    assert peer.dest.status()["completed"] == completed


# ---------------------------------------------------------------- bounded work


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def test_decompression_is_bounded(peer):
    """256 MiB of zeros in ~1 MiB of lz4, declared as one page: refused after 4 KiB of output."""
    bomb = np.zeros((1 << 16, wire.PAGE_SIZE), np.uint8)
    body = raw_frame(T.PAGES, 1, pages_body([3], [0], _lz4(bomb, 4096)), flags=wire.FLAG_LZ4)
    assert len(body) < 2 << 20
    failed = peer.dest.status()["failed"]
    peak = _peak_rss_kib(peer.dest.pid)
    migration_id = await peer.hello()
    got, error, lines = await peer.send(f"/migrations/{migration_id}/pass/1", body)
    assert (got, error) == (400, "decompressed-size-mismatch")
    _one_line(lines, "decompressed-size-mismatch")
    assert _peak_rss_kib(peer.dest.pid) - peak < 64 << 10  # far below the 256 MiB it claims
    await peer.assert_discarded(migration_id, failed)


def _raw_hello(sock: socket.socket) -> str:
    """HELLO over a bare socket (for tests that then break HTTP itself); return the id."""
    sock.sendall(b"POST /migrations HTTP/1.1\r\nHost: x\r\nContent-Length: "
                 + str(len(hello_frame(NPAGES))).encode() + b"\r\n\r\n" + hello_frame(NPAGES))
    return json.loads(sock.recv(4096).partition(b"\r\n\r\n")[2])["id"]


@pytest.mark.parametrize("split", [True, False], ids=["after-a-good-chunk", "at-once"])
def test_malformed_http_framing(split):
    """A chunked body whose chunk size is not hex. Sent after a good chunk, aiohttp stops
    feeding the handler and answers nothing; sent with the request head, aiohttp answers
    400 itself (one line: no traceback) and the handler never runs. Either way the
    watchdog then drops the stalled migration, with one line."""
    with LoggedDestination("--idle-timeout", "0.5") as dest:
        host, port = dest.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            migration_id = _raw_hello(sock)
            head = (f"POST /migrations/{migration_id}/pass/1 HTTP/1.1\r\nHost: x\r\n"
                    "Transfer-Encoding: chunked\r\n\r\n".encode())
            bad = b"zz\r\n" + ONE + b"\r\n"
            if split:
                sock.sendall(head + f"{len(ONE):x}\r\n".encode() + ONE + b"\r\n")
                wait_until(lambda: dest.status()["pages-received"] == 1, 5,
                           "the handler to take the good chunk first")
                sock.sendall(bad)
            else:
                sock.sendall(head + bad)
            answer = sock.recv(4096)  # a 400, or the connection closed: never a hang
        assert answer == b"" or answer.startswith((b"HTTP/1.1 400", b"HTTP/1.0 400")), answer
        status = dest.wait_idle(timeout=5)
        assert (status["failed"], status["completed"]) == (1, 0)
        lines = dest.wait_log(1 if split else 2)
        assert not any("Traceback" in line for line in lines), lines
        assert len(lines) == (1 if split else 2), lines
        if not split:
            assert "Error handling request" in lines[0] and "chunk size" in lines[0]
        assert f"migration {migration_id}: discarded" in lines[-1]


def test_peer_gone_mid_body(dest):
    """A chunked pass whose sender vanishes halfway: discarded, one line, no traceback."""
    start = dest.status()
    before = len(dest.lines_until_marker()) + 1  # past every earlier line, late ones too
    host, port = dest.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        migration_id = _raw_hello(sock)
        sock.sendall(f"POST /migrations/{migration_id}/pass/1 HTTP/1.1\r\nHost: x\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n".encode()
                     + f"{len(ONE):x}\r\n".encode() + ONE + b"\r\n")
        wait_until(lambda: dest.status()["pages-received"] == 1, 5, "the first batch")
    status = dest.wait_idle()
    assert status["failed"] == start["failed"] + 1
    assert status["completed"] == start["completed"]
    dest.wait_log(before + 1)
    # A traceback would follow the discard at once: a marker request's line, logged after
    # it by the same event loop, shows that nothing came in between.
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"DELETE /migrations/marker HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 404")
    lines = dest.wait_log(before + 2)[before:]
    assert len(lines) == 2 and "/migrations/marker" in lines[1], lines
    assert f"migration {migration_id}: discarded" in lines[0] and "connection lost" in lines[0]


# ---------------------------------------------------------------- and it still works


def test_destination_still_migrates(dest, tmp_path):
    """Last in the module: after everything above, the same process takes a real migration."""
    out = tmp_path / "r.json"
    proc = precopy("source", str(SMALL), "--dest", dest.url, "--quiet", "--json", str(out),
                   "--set", "guest.memory=4MiB", "--set", "mmu.mapped-memory=2MiB")
    assert proc.returncode == 0, proc.stderr
    assert dest.proc.poll() is None


# ---------------------------------------------------------------- races with verification


class HeldVerification:
    """The destination's verification, held in its worker thread until the test releases it."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    async def wait_started(self) -> None:
        assert await asyncio.to_thread(self.started.wait, 10), "verification never started"


@pytest.fixture
async def slow_dest(monkeypatch):
    """The application in-process on 127.0.0.1, served as `precopy dest` serves it (aiohttp's
    TestServer cancels handlers when the peer goes; production does not), its verification
    held until the test releases it."""
    verify = Receiver.verify
    held = HeldVerification()

    def held_verify(self, *args):
        held.started.set()  # runs in a worker thread, as the real one does
        held.release.wait(30)
        return verify(self, *args)

    monkeypatch.setattr(Receiver, "verify", held_verify)
    outcomes: list[bool] = []
    finished = asyncio.Event()

    def on_finish(ok: bool) -> None:
        outcomes.append(ok)
        finished.set()

    app = make_app(max_memory_pages=MAX_MEMORY_PAGES, on_finish=on_finish)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)  # as `precopy dest`
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    server = f"http://{host}:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            status, answer = await _post(http, server, "/migrations", hello_frame(NPAGES))
            migration_id = answer["id"]
            status, _ = await _post(http, server, f"/migrations/{migration_id}/pass/1",
                                    pass_body(1, MEMORY))
            assert status == 200
            yield server, http, migration_id, app, outcomes, held, finished
    finally:
        held.release.set()
        await runner.cleanup()


async def _post(http, server, path, body, **kwargs):
    async with http.post(server + path, data=body, **kwargs) as resp:
        return resp.status, await resp.json(content_type=None)


def _counts(app) -> tuple[int, int]:
    from migrate.dest.server import RECEIVER

    receiver = app[RECEIVER]
    return receiver.completed, receiver.failed


async def test_source_gone_during_verification_is_not_resumed(slow_dest, caplog):
    """The source stops waiting for RESUMED (and resumes its guest): no second copy here."""
    server, http, migration_id, app, outcomes, held, finished = slow_dest
    caplog.set_level(logging.INFO, logger="precopy.dest")
    complete = asyncio.ensure_future(_post(http, server, f"/migrations/{migration_id}/complete",
                                           complete_body(1, MEMORY)))
    await held.wait_started()
    complete.cancel()  # the source stops waiting: its connection goes
    with pytest.raises(asyncio.CancelledError):
        await complete
    held.release.set()
    await asyncio.wait_for(finished.wait(), 10)
    assert outcomes == [False]
    assert _counts(app) == (0, 1)
    assert "the source left before it could hear RESUMED" in caplog.text


async def test_pages_during_verification_are_refused(slow_dest):
    server, http, migration_id, app, outcomes, held, _ = slow_dest
    complete = asyncio.ensure_future(
        _post(http, server, f"/migrations/{migration_id}/complete", complete_body(1, MEMORY)))
    await held.wait_started()  # COMPLETE is in, verification running
    status, answer = await _post(http, server, f"/migrations/{migration_id}/pass/2",
                                 pass_body(2, guest_image(NPAGES, seed=1)))
    assert (status, answer["error"]) == (409, "unexpected-message")
    held.release.set()
    status, answer = await complete
    assert (status, answer["error"]) == (404, "unknown-migration")  # discarded, not resumed
    assert outcomes == [False] and _counts(app) == (0, 1)


async def test_second_complete_during_verification_is_refused(slow_dest):
    server, http, migration_id, app, outcomes, held, _ = slow_dest
    body = complete_body(1, MEMORY)
    first = asyncio.ensure_future(
        _post(http, server, f"/migrations/{migration_id}/complete", body))
    await held.wait_started()
    status, answer = await _post(http, server, f"/migrations/{migration_id}/complete", body)
    assert (status, answer["error"]) == (409, "unexpected-message")
    held.release.set()
    status, answer = await first
    assert status == 404
    assert outcomes == [False] and _counts(app) == (0, 1)
