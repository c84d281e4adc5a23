"""Helpers for the fault, bad-input and security tests.

- `LoggedDestination`: a real `precopy dest` whose log lines the test reads as
  they come, and whose /status it polls.
- `Faults`: the source's real client and page channels, calling a test's hook
  at chosen points (before hello, before each page frame, before COMPLETE), so
  a test kills or stops the destination at a precise moment without a hook in
  production code.
- `guest_truth`: what the guest's memory must hold given what it wrote.
- `LineReader`: the stdout of a source process, line by line, with a bound.
- crafted wire bytes (`hello_frame`, `pass_body`, `raw_frame`, ...) and
  `send_upgraded`, a page channel driven by hand.

Every wait here is bounded; none sleeps longer than a poll interval.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import queue
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from migrate import wire
from migrate.config import Scenario, load_scenario
from migrate.digest import page_digests
from migrate.source.channel import PageChannel
from migrate.source.client import DestinationClient
from migrate.source.engine import Source
from tests.procs import ROOT, SMALL, Destination, terminate
from vmmodel import Vm

POLL_S = 0.02


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `predicate` until it returns a true value; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(POLL_S)


def small(*overrides: str) -> Scenario:
    return load_scenario(SMALL, overrides)


_markers = itertools.count()


class LoggedDestination(Destination):
    """`precopy dest` on 127.0.0.1 whose stderr (its log) is collected line by line.

    The image store unless *extra* names one: these tests' --max-memory bounds the
    guest's size, as it does with the image (`tests/test_dest_store.py` runs them
    again with the digests).
    """

    def __init__(self, *extra: str, env: dict[str, str] | None = None) -> None:
        if "--store" not in extra:
            extra = (*extra, "--store", "image")
        super().__init__(*extra, env=env)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL, and wait until it is gone: the port refuses from now on."""
        self.proc.kill()
        self.proc.wait(timeout=10)

    def wait_log(self, count: int, timeout: float = 5.0) -> list[str]:
        """Wait until the log has `count` lines; return them all."""
        wait_until(lambda: len(self.lines) >= count, timeout, f"{count} log lines {self.lines}")
        return list(self.lines)

    def lines_until_marker(self, timeout: float = 5.0) -> list[str]:
        """Every line logged so far, up to a marker request's line (the log is one ordered
        stream: what an earlier request logs comes before it)."""
        marker = f"marker{next(_markers)}"
        request = urllib.request.Request(f"{self.url}/migrations/{marker}", method="DELETE")
        try:
            urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as err:
            assert err.code == 404, err
        wait_until(lambda: any(marker in line for line in self.lines), timeout, "the marker line")
        lines = list(self.lines)
        return lines[: next(i for i, line in enumerate(lines) if marker in line)]

    def status(self, token: str | None = None) -> dict:
        request = urllib.request.Request(f"{self.url}/status")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=5) as resp:
            return json.loads(resp.read())

    def wait_idle(self, timeout: float = 5.0) -> dict:
        """Wait until no migration is in progress; return /status."""
        def idle() -> dict | None:
            status = self.status()
            return None if status["busy"] else status

        return wait_until(idle, timeout, "the destination to be idle")

    def stop(self) -> None:
        terminate(self.proc)
        self._reader.join(timeout=5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()


Hook = Callable[[str, int, int], None]  # (event, pass number, frame index)


class Faults:
    """Calls `hook(event, pass_no, index)` before the source's messages, so a test strikes
    at a precise moment: ("hello", 0, 0) before HELLO, ("frame", pass_no, i) before the
    i-th page frame any channel of the pass sends, ("complete", pass_no, 0) before COMPLETE.

    Installed with pytest's monkeypatch on the real client and page channel: the
    source runs unchanged, and production code has no test hook.
    """

    def __init__(self, monkeypatch: Any, hook: Hook) -> None:
        self.hook = hook
        self.frames: dict[int, int] = {}
        hello, complete = DestinationClient.hello, DestinationClient.complete
        send = PageChannel.send
        faults = self

        async def hooked_hello(client: DestinationClient, info: dict[str, Any]) -> str:
            faults.hook("hello", 0, 0)
            return await hello(client, info)

        async def hooked_complete(client: DestinationClient, migration_id: str, pass_no: int,
                                  *args: Any) -> dict[str, Any]:
            faults.hook("complete", pass_no, 0)
            return await complete(client, migration_id, pass_no, *args)

        async def hooked_send(channel: PageChannel, parts: Any) -> None:
            pass_no = int(channel.path.rsplit("/", 1)[1])
            index = faults.frames.get(pass_no, 0)
            faults.frames[pass_no] = index + 1
            faults.hook("frame", pass_no, index)
            await send(channel, parts)

        monkeypatch.setattr(DestinationClient, "hello", hooked_hello)
        monkeypatch.setattr(DestinationClient, "complete", hooked_complete)
        monkeypatch.setattr(PageChannel, "send", hooked_send)


def guest_truth(source: Source) -> np.ndarray:
    """The memory the guest must have, given what it wrote: the prefill, then every page
    written stamped with its gfn and its write count (`GuestMemory.stamp`).

    Built from a fresh guest of the same scenario and the source guest's write
    counters, so it is independent of anything the migration did: the source
    never writes guest memory, so its copy must equal this page for page.
    """
    s = source.scenario
    fresh = Vm(s.guest, s.mmu, s.costs, s.seed)
    fresh.prefill()
    truth = fresh.pages.copy()
    counts = source.vm.memory.write_count
    written = np.flatnonzero(counts)
    words = truth.view(np.uint64).reshape(len(truth), -1)
    words[written, 0] = written.astype(np.uint64)
    words[written, 1] = counts[written]
    return truth


class LineReader:
    """A process's stdout, line by line, each read bounded."""

    def __init__(self, stream: Any) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()
        self.seen: list[str] = []

    def _read(self, stream: Any) -> None:
        for line in stream:
            self._lines.put(line)
        self._lines.put(None)

    def wait_for(self, predicate: Callable[[str], bool], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(deadline - time.monotonic(), 0.001))
            except queue.Empty:
                raise AssertionError(f"no matching line within {timeout} s: {self.seen}") from None
            if line is None:
                raise AssertionError(f"the stream ended without a matching line: {self.seen}")
            self.seen.append(line)
            if predicate(line):
                return line


def start_precopy(*args: str, **kwargs: Any) -> subprocess.Popen:
    """`precopy ARGS` as a child the test signals; the caller bounds every wait on it."""
    return subprocess.Popen([sys.executable, "-m", "migrate", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def children(pid: int) -> list[int]:
    """The live child processes of `pid` (Linux)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def is_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# ---------------------------------------------------------------- crafted wire bytes

def guest_image(npages: int, seed: int = 0) -> np.ndarray:
    """Guest pages for crafted migrations: random bytes, every eighth page zero."""
    memory = np.random.default_rng(seed).integers(0, 256, (npages, wire.PAGE_SIZE), np.uint8)
    memory[::8] = 0
    return memory


def hello_frame(npages: int, **extra: Any) -> bytes:
    return wire.encode_control(wire.MsgType.HELLO, 0,
                               {"page-size": wire.PAGE_SIZE, "memory-pages": npages, **extra})


def pages_frame(pass_no: int, memory: np.ndarray, gfns: Any, *, compress: bool = False) -> bytes:
    gfns = np.asarray(gfns, dtype=np.int64)
    return b"".join(wire.encode_gathered(pass_no, memory, gfns, compress=compress).parts)


def end_frame(pass_no: int, pages: int) -> bytes:
    return wire.encode_control(wire.MsgType.END_OF_PASS, pass_no, {"pages": pages})


def pass_body(pass_no: int, memory: np.ndarray, gfns: Any = None) -> bytes:
    """A whole, valid pass stream: one batch of `gfns` (default: every page), END_OF_PASS."""
    gfns = np.arange(len(memory)) if gfns is None else np.asarray(gfns)
    return pages_frame(pass_no, memory, gfns) + end_frame(pass_no, len(gfns))


def complete_body(pass_no: int, memory: np.ndarray) -> bytes:
    """DEVICE_STATE, PAGE_DIGESTS of `memory`, COMPLETE: what a source sends after its last pass."""
    return b"".join([
        wire.encode_device_state(pass_no, b"\x01" * 64),
        wire.encode_digests(pass_no, page_digests(memory)),
        wire.encode_control(wire.MsgType.COMPLETE, pass_no, {"pages": len(memory)}),
    ])


def raw_frame(msg_type: int, pass_no: int, body: bytes, *, magic: bytes = wire.MAGIC,
              version: int = wire.VERSION, flags: int = 0, length: int | None = None) -> bytes:
    """A frame with any header field set by hand (the encoders refuse to write bad ones)."""
    size = len(body) if length is None else length
    return wire.HEADER.pack(magic, version, msg_type, flags, pass_no, size) + body


def pages_body(gfns: Any, kinds: Any, payload: bytes) -> bytes:
    """A PAGES body laid out by hand: count, reserved, gfns, kinds, padding, payload."""
    gfns = np.asarray(gfns, dtype="<u8")
    n = len(gfns)
    pad = (-n) % 8
    return struct.pack("<II", n, 0) + gfns.tobytes() + bytes(kinds) + bytes(pad) + payload


async def send_upgraded(url: str, path: str, body: bytes) -> tuple[int | None, str | None]:
    """POST `path` as an upgraded page channel (the source's way): after the 101, `body`
    as raw frames, then end of stream. Return the answer's status and error code (None on
    success), or (None, None) if the answer was lost.

    The destination answers a refusal with an ERROR frame, half-closes and drops what
    we still send until we close, so the answer is never lost to a reset; (None, None)
    means it was.
    """
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\n"
                     f"Upgrade: {wire.UPGRADE}\r\nContent-Length: 0\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        if not head.startswith(b"HTTP/1.1 101"):  # refused before the upgrade: plain HTTP
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            answer = json.loads(await asyncio.wait_for(reader.readexactly(length), 5))
            return int(head.split()[1]), answer.get("error")
        try:
            writer.write(body)
            writer.write_eof()
            await writer.drain()
        except ConnectionError:
            pass  # refused halfway: the answer is already on its way
        try:
            frames = [f async for f in wire.read_frames(reader, max_body=1 << 16)]
        except ConnectionResetError:
            return None, None
    finally:
        writer.close()
    assert len(frames) == 1 and frames[0][0].type in (wire.MsgType.ERROR,
                                                      wire.MsgType.END_OF_PASS), frames
    info = wire.decode_control(*frames[0])
    if frames[0][0].type == wire.MsgType.END_OF_PASS:
        return 200, None
    return info["status"], info["error"]
