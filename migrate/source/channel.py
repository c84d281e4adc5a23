"""The source's end of a page channel, like one of QEMU's multifd channels.

The destination's end is `migrate.dest.stream`; the wire between them is all they share.

A pass goes out over N channels at once (`migration.channels`). Each channel
is one `POST /migrations/{id}/pass/{n}` whose frames are PAGES batches and a
closing END_OF_PASS `{"pages", "channel", "channels"}`: how many pages this
channel carried, which channel it is and of how many. The destination counts
the pass as ended once all N channels have ended it; the control requests
(hello, complete, cancel) are the control channel.

A channel travels one of two ways, with the same frames and the same checks
(`PassStream`):

- upgraded, which the source uses: the POST carries `Upgrade: precopy-pages/1`,
  the destination answers 101, and from then on the connection carries raw
  frames. The source writes each batch as one buffer, with no HTTP chunk
  framing (aiohttp joins every chunk with its framing: one more copy on
  Python < 3.12.9), and the destination receives each frame straight into a
  buffer of its own (an asyncio `BufferedProtocol` takes over the connection
  from aiohttp), so a page byte is copied twice on the way in (kernel ->
  frame, frame -> guest image) where a chunked body costs four (kernel ->
  aiohttp's buffer -> llhttp's chunk -> `readexactly` -> guest image). The
  destination answers with one frame, END_OF_PASS `{"pass", "pages",
  "bytes"}` or ERROR `{"error", "detail", "status"}`, and closes.
- a chunked POST body, which any HTTP client can send: answered with JSON,
  as every other request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from migrate import wire
from migrate.errors import (
    ProtocolError,
    UnexpectedMessage,
)
from migrate.source.client import DestinationError

log = logging.getLogger("precopy.source.channel")

ANSWER_MAX_BODY = 1 << 16
HEAD_MAX_BYTES = 1 << 16  # an HTTP response head longer than this is not from our destination
FLUSH_BYTES = 256 << 10  # the source sends its queued frames once they reach this...
FLUSH_PARTS = 512  # ...or this many buffers (sendmsg takes at most IOV_MAX, 1024)


def _head_fields(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP response: {lines[0][:80]!r}")
    fields = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            fields[name.strip().lower()] = value.strip()
    return int(parts[1]), fields


class PageChannel:
    """The source's end of one upgraded page channel: frames out, one answer back.

    A plain non-blocking socket driven by the event loop (`loop.sock_sendall`
    sends from the frame's own buffer as the socket drains, where a
    transport would copy what the socket does not take at once). Every wait
    on the destination (connecting, the socket taking data, the answer) is
    bounded by `timeout_s`; any failure is a `DestinationError` that says
    what the destination answered, when it did.
    """

    def __init__(self, sock: socket.socket, path: str, timeout_s: float) -> None:
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._pending = b""  # received, not yet parsed
        self._queue: list[wire.Buffer] = []  # frame parts not sent yet
        self._queued = 0
        self.path = path
        self.timeout_s = timeout_s

    @classmethod
    async def open(cls, base_url: str, path: str, *, token: str | None,
                   timeout_s: float) -> PageChannel:
        """Connect and upgrade. Raise `DestinationError` if the destination refuses."""
        url = urlsplit(base_url)
        if url.scheme != "http" or not url.hostname:
            raise DestinationError(f"{base_url}: page channels need an http://HOST:PORT URL")
        if token is not None and any(c in token for c in "\r\n"):
            raise DestinationError("the token holds a line break")
        head = [f"POST {path} HTTP/1.1", f"Host: {url.netloc}", "Connection: Upgrade",
                f"Upgrade: {wire.UPGRADE}", "Content-Length: 0"]
        if token:
            head.append(f"Authorization: Bearer {token}")
        channel = None
        try:
            async with asyncio.timeout(timeout_s):
                sock = await _connect(url.hostname, url.port or 80)
                channel = cls(sock, path, timeout_s)
                await channel._loop.sock_sendall(sock, ("\r\n".join(head) + "\r\n\r\n").encode())
                status, fields = _head_fields(await channel._recv_until(b"\r\n\r\n"))
                if status != 101:
                    length = min(int(fields.get("content-length", "0")), ANSWER_MAX_BODY)
                    raise _refusal(path, status, await channel._recv_exactly(length))
            return channel
        except BaseException as err:
            if channel is not None:
                channel.close()
            if isinstance(err, TimeoutError):
                raise DestinationError(
                    f"POST {path}: the destination did not answer for {timeout_s:g} s"
                ) from None
            if isinstance(err, OSError | ValueError):
                raise DestinationError(f"POST {path}: {type(err).__name__}: {err}") from err
            raise

    async def send(self, parts: Sequence[wire.Buffer]) -> None:
        """Queue one frame's parts; send the queue once it holds `FLUSH_BYTES`.

        Small frames (a batch of zero pages is ~2 KiB) go out many to one
        system call: on loopback each send costs ~35 us of kernel time
        whatever its size. Return once the socket has taken what was sent.
        """
        self._queue.extend(parts)
        self._queued += sum(len(part) for part in parts)
        if self._queued >= FLUSH_BYTES or len(self._queue) >= FLUSH_PARTS:
            await self.flush()

    async def flush(self) -> None:
        """Send everything queued, straight from the frames' buffers (`sendmsg`).

        The destination only speaks before END_OF_PASS to refuse: if it has,
        raise its error instead of sending into a stream it is dropping.
        """
        if self._answered_early():
            raise await self._lost(ConnectionResetError("the destination refused the stream"))
        parts, self._queue, self._queued = self._queue, [], 0
        while parts:
            try:
                sent = self._sock.sendmsg(parts)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as err:
                raise await self._lost(err) from err
            parts = _drop(parts, sent)
            if parts:
                await self._writable()

    def _answered_early(self) -> bool:
        """Whether the destination has spoken (or closed) before END_OF_PASS: a refusal."""
        if self._pending:
            return True
        try:
            self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return False  # nothing to read: the normal case
        except OSError:
            return True  # reset: `_lost` says what the destination said, if anything
        return True  # its answer, or its end of the connection closed

    async def _writable(self) -> None:
        """Wait until the socket takes data again, at most `timeout_s`."""
        fd = self._sock.fileno()
        ready = self._loop.create_future()
        self._loop.add_writer(fd, lambda: ready.done() or ready.set_result(None))
        try:
            async with asyncio.timeout(self.timeout_s):
                await ready
        except TimeoutError:
            raise DestinationError(
                f"POST {self.path}: the destination took no data for {self.timeout_s:g} s"
            ) from None
        finally:
            self._loop.remove_writer(fd)

    async def _lost(self, err: OSError) -> DestinationError:
        """The error to raise for a failed send: the destination's ERROR frame, if it sent one
        (it refused, then closed), else the connection loss."""
        try:
            async with asyncio.timeout(1.0):
                await self._answer()
        except DestinationError as refusal:
            return refusal
        except (TimeoutError, OSError):
            pass
        return DestinationError(f"POST {self.path}: connection lost: {err}")

    async def finish(self, end_of_pass: bytes) -> dict[str, Any]:
        """Write END_OF_PASS and return the destination's answer `{"pass", "pages", "bytes"}`."""
        await self.send([end_of_pass])
        await self.flush()
        return await self.answer()

    async def answer(self) -> dict[str, Any]:
        """Wait for the destination's answer, at most `timeout_s`; return it if it is
        END_OF_PASS, raise `DestinationError` if it is ERROR (or nothing)."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._answer()
        except TimeoutError:
            raise DestinationError(
                f"POST {self.path}: the destination did not answer for {self.timeout_s:g} s"
            ) from None
        except OSError as err:
            raise DestinationError(f"POST {self.path}: connection lost: {err}") from err

    def close(self) -> None:
        self._sock.close()

    async def _recv_more(self) -> None:
        data = await self._loop.sock_recv(self._sock, 1 << 16)
        if not data:
            raise ConnectionResetError("the destination closed the connection")
        self._pending += data

    async def _recv_until(self, marker: bytes) -> bytes:
        while (end := self._pending.find(marker)) < 0:
            if len(self._pending) > HEAD_MAX_BYTES:
                raise ValueError(f"no {marker!r} in the first {HEAD_MAX_BYTES} bytes")
            await self._recv_more()
        data, self._pending = self._pending[: end + len(marker)], self._pending[end + len(marker):]
        return data

    async def _recv_exactly(self, n: int) -> bytes:
        while len(self._pending) < n:
            await self._recv_more()
        data, self._pending = self._pending[:n], self._pending[n:]
        return data

    async def _answer(self) -> dict[str, Any]:
        try:
            header = wire.parse_header(await self._recv_exactly(wire.HEADER_SIZE),
                                       ANSWER_MAX_BODY)
            body = await self._recv_exactly(header.length)
            if header.type not in (wire.MsgType.END_OF_PASS, wire.MsgType.ERROR):
                raise UnexpectedMessage(f"{header.type.name} as an answer")
            info = wire.decode_control(header, body)
        except ProtocolError as err:
            raise DestinationError(f"POST {self.path}: a bad answer: {err}") from err
        except ConnectionResetError:
            raise DestinationError(f"POST {self.path}: the destination closed the channel "
                                   "without an answer") from None
        if header.type == wire.MsgType.ERROR:
            status, code = info.get("status"), info.get("error")
            raise DestinationError(
                f"POST {self.path}: {status} {code}: {info.get('detail')}",
                status=status if isinstance(status, int) else None,
                code=code if isinstance(code, str) else None,
            )
        return info


def _drop(parts: list[wire.Buffer], nbytes: int) -> list[wire.Buffer]:
    """*parts* without their first *nbytes* bytes."""
    for i, part in enumerate(parts):
        if nbytes < len(part):
            return [memoryview(part)[nbytes:], *parts[i + 1 :]] if nbytes else parts[i:]
        nbytes -= len(part)
    return []


async def _connect(host: str, port: int) -> socket.socket:
    """A connected non-blocking TCP socket to *host*:*port* (each address in turn)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    error: OSError = OSError(f"{host}:{port} has no address")
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.sock_connect(sock, address)
            return sock
        except OSError as err:
            sock.close()
            error = err
        except BaseException:
            sock.close()
            raise
    raise error


def _refusal(path: str, status: int, body: bytes) -> DestinationError:
    """The destination's JSON refusal `{error, detail}` as a `DestinationError`."""
    try:
        info = json.loads(body)
    except ValueError:
        info = None
    if not isinstance(info, dict):
        info = {"error": "bad-response", "detail": body[:200].decode("utf-8", "replace")}
    code = info.get("error") if isinstance(info.get("error"), str) else None
    return DestinationError(f"POST {path}: {status} {code}: {info.get('detail', info)}",
                            status=status, code=code)
