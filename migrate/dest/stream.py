"""The destination's end of a page channel: one pass's stream of frames, checked and stored.

The source's end is `migrate.source.channel`, whose docstring tells the whole
channel (N channels a pass, the END_OF_PASS that closes each, the upgraded and
the chunked way); the wire between them is all they share. Here each channel
is a `PassStream`, fed either by the chunked POST body or, once the POST is
upgraded (`Upgrade: precopy-pages/1`, answered 101), by `_FrameReader`: an
asyncio `BufferedProtocol` that takes the connection over from aiohttp and
receives each frame straight into a buffer of its own, so a page byte is
copied twice on the way in (kernel -> frame, frame -> store) where a chunked
body costs four. An upgraded stream is answered with one frame, END_OF_PASS
`{"pass", "pages", "bytes"}` or ERROR `{"error", "detail", "status"}`, then
closed; a chunked one with JSON, as every other request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from aiohttp import web

from migrate import wire
from migrate.dest.receiver import Incoming, Receiver
from migrate.errors import (
    BadControlMessage,
    MessageTooLarge,
    SourceTimeout,
    TruncatedMessage,
    UnexpectedMessage,
)


def max_stream_bytes(npages: int, max_body: int) -> int:
    """A pass stream carries each guest page at most once: its pages, their metadata, slack."""
    return npages * (wire.PAGE_SIZE + 64) + max_body


def _count(info: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = info.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BadControlMessage(f"END_OF_PASS field {key!r} = {value!r} is not in {low}..{high}")
    return value


class PassStream:
    """One channel's stream of one pass at the destination: each frame checked, then stored.

    `frame()` takes the frames in order and hands each batch to the receiver
    at once; `close()` ends the stream, which must have ended with END_OF_PASS,
    and has the receiver count this channel's end of the pass.
    """

    def __init__(self, receiver: Receiver, incoming: Incoming, pass_no: int, *,
                 max_body: int) -> None:
        self.receiver = receiver
        self.incoming = incoming
        self.pass_no = pass_no
        self.max_body = max_body
        self.max_bytes = max_stream_bytes(incoming.npages, max_body)
        self.pages = 0
        self.nbytes = 0
        self.channel = 0
        self.channels = 1
        self.ended = False

    def frame(self, header: wire.Header, body: wire.Buffer) -> None:
        """Check one frame and store its pages.

        Raise `UnexpectedMessage` for a frame after END_OF_PASS, of another
        pass, or of a type with no place in a page stream; `MessageTooLarge`
        past the stream's byte or page budget; `BadControlMessage` for an
        END_OF_PASS whose fields are wrong or whose page count is not what
        the stream carried; and what `decode_pages` and `Receiver.apply` raise.
        """
        if self.ended:
            raise UnexpectedMessage("a frame after END_OF_PASS")
        if header.pass_no != self.pass_no:
            raise UnexpectedMessage(
                f"frame of pass {header.pass_no} in the stream of pass {self.pass_no}"
            )
        self.nbytes += wire.HEADER_SIZE + len(body)
        if self.nbytes > self.max_bytes:
            raise MessageTooLarge(f"stream of pass {self.pass_no} exceeds {self.max_bytes} bytes")
        if header.type == wire.MsgType.PAGES:
            batch = wire.decode_pages(header, body, max_gfn=self.incoming.npages)
            if self.pages + len(batch.gfns) > self.incoming.npages:
                raise MessageTooLarge(f"stream of pass {self.pass_no} carries more pages than "
                                      f"the guest's {self.incoming.npages}")
            self.receiver.apply(self.incoming, batch)
            self.pages += len(batch.gfns)
        elif header.type == wire.MsgType.END_OF_PASS:
            info = wire.decode_control(header, body)
            if "pages" in info and info["pages"] != self.pages:
                raise BadControlMessage(f"END_OF_PASS counts {info['pages']!r} pages; the "
                                        f"stream of pass {self.pass_no} carried {self.pages}")
            self.channels = _count(info, "channels", 1, 1, wire.MAX_CHANNELS)
            self.channel = _count(info, "channel", 0, 0, self.channels - 1)
            self.ended = True
        else:
            raise UnexpectedMessage(f"{header.type.name} in a page stream")

    def close(self) -> dict[str, int]:
        """End the stream; return the answer `{"pass", "pages", "bytes"}`.

        Raise `TruncatedMessage` if END_OF_PASS never came, and what
        `Receiver.end_pass` raises.
        """
        if not self.ended:
            raise TruncatedMessage(f"stream of pass {self.pass_no} ended without END_OF_PASS")
        self.receiver.end_pass(self.incoming, self.pass_no,
                               channel=self.channel, channels=self.channels)
        self.incoming.bytes_received += self.nbytes
        return {"pass": self.pass_no, "pages": self.pages, "bytes": self.nbytes}


def wants_upgrade(request: web.Request) -> bool:
    """Whether the request asks for an upgraded page channel."""
    return (request.headers.get("Upgrade", "").strip().lower() == wire.UPGRADE
            and "upgrade" in request.headers.get("Connection", "").lower())


class _FrameReader(asyncio.BufferedProtocol):
    """The destination's end of an upgraded channel, in aiohttp's place on the connection.

    Each header and each body is received straight into a buffer of its own
    size, and the frame goes to `PassStream.frame()` as soon as it is whole.
    What asyncio tells the protocol is passed on to aiohttp's, so it still
    learns when the connection is lost or its writer must pause.
    """

    def __init__(self, http: asyncio.BaseProtocol, stream: PassStream,
                 transport: asyncio.Transport) -> None:
        self._http = http
        self._stream = stream
        self._transport = transport
        self._head = memoryview(bytearray(wire.HEADER_SIZE))
        self._body = np.empty(0, dtype=np.uint8)  # reused: a frame is stored before the next
        self._header: wire.Header | None = None
        self._buf = self._head
        self._filled = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # The handler may have stopped waiting (a stall, a shutdown) before the connection
        # goes: its late failure is expected, not "a Future exception never retrieved".
        self.done.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.last_data = time.monotonic()
        self.drained: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._draining = False

    def drain(self) -> None:
        """Read and drop whatever the source still sends, until it closes (see `_refuse`)."""
        self._draining = True
        self._buf, self._filled = memoryview(bytearray(1 << 16)), 0
        self._transport.resume_reading()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buf[self._filled:]

    def buffer_updated(self, nbytes: int) -> None:
        self.last_data = time.monotonic()
        if self._draining:
            return  # dropped: the stream was refused
        self._filled += nbytes
        if self._filled < len(self._buf) or self.done.done():
            return
        try:
            self._take()
        except Exception as err:  # a refusal, or a bug: the handler reports it
            self._finish(err)

    def _take(self) -> None:
        if self._header is None:
            self._header = wire.parse_header(self._head, self._stream.max_body)
            if self._header.length:
                if self._body.shape[0] < self._header.length:
                    self._body = np.empty(self._header.length, dtype=np.uint8)
                self._buf = memoryview(self._body)[: self._header.length]
                self._filled = 0
                return
        header, body = self._header, self._buf if self._header.length else b""
        self._header, self._buf, self._filled = None, self._head, 0
        self._stream.frame(header, body)
        if self._stream.ended:
            self._finish(None)

    def _finish(self, err: BaseException | None) -> None:
        """Stop reading: END_OF_PASS came, or the stream failed with *err*."""
        if not self.done.done():
            self._transport.pause_reading()
            if err is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(err)

    def eof_received(self) -> bool:
        self._drained()  # the source sends nothing more: nothing left to drain
        if self._draining:
            return True
        where = "in the middle of a frame" if self._filled or self._header else "before END_OF_PASS"
        self._finish(TruncatedMessage(
            f"stream of pass {self._stream.pass_no} ended {where}"
        ))
        return True  # keep the connection: the handler answers, then closes it

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(ConnectionResetError(f"connection lost: {exc!r}"))
        self._drained()
        self._http.connection_lost(exc)

    def _drained(self) -> None:
        if not self.drained.done():
            self.drained.set_result(None)

    def pause_writing(self) -> None:
        self._http.pause_writing()

    def resume_writing(self) -> None:
        self._http.resume_writing()


async def _wait(reader: _FrameReader, idle_s: float) -> None:
    """Wait for END_OF_PASS; raise what failed the stream, or `SourceTimeout` if it stalls."""
    while True:
        done, _ = await asyncio.wait({reader.done}, timeout=min(1.0, idle_s / 4))
        if done:
            return reader.done.result()
        if time.monotonic() - reader.last_data > idle_s:
            raise SourceTimeout(f"no bytes from the source for {idle_s:g} s")


async def serve_upgraded(request: web.Request, stream: PassStream, *, idle_s: float,
                         refuse: Callable[[Exception], dict[str, Any]]) -> web.StreamResponse:
    """Answer 101, take the connection over and receive one channel's stream of frames.

    A refusal cannot be an HTTP status any more once the 101 is out: it is
    an ERROR frame, whose body `refuse(err)` returns after it has logged and
    discarded as for any other request (the server's `refusal`).
    """
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ConnectionResetError("connection lost before the upgrade")
    response = web.StreamResponse(status=101,
                                  headers={"Connection": "Upgrade", "Upgrade": wire.UPGRADE})
    response.force_close()
    reader = _FrameReader(request.protocol, stream, transport)
    transport.set_protocol(reader)  # before the 101: every byte after it is the reader's
    await response.prepare(request)
    try:
        await _wait(reader, idle_s)
        answer = wire.encode_control(wire.MsgType.END_OF_PASS, stream.pass_no, stream.close())
    except Exception as err:  # a refusal, a lost connection, or a bug of ours
        answer = wire.encode_control(wire.MsgType.ERROR, stream.pass_no, refuse(err))
    if not transport.is_closing():
        transport.write(answer)
        if not answer.startswith(_END_OF_PASS_PREFIX):
            await _refuse(reader, transport)
        transport.close()  # after the answer is flushed
    return response


_END_OF_PASS_PREFIX = wire.MAGIC + bytes([wire.VERSION, wire.MsgType.END_OF_PASS])
REFUSAL_DRAIN_S = 2.0


async def _refuse(reader: _FrameReader, transport: asyncio.Transport) -> None:
    """Make sure the ERROR frame reaches the source before the connection goes.

    Closing a socket with unread input makes the kernel send a reset and drop
    what it has not sent yet, the ERROR frame included. So: half-close after
    the answer, drop what the source still sends until it closes its end (it
    stops once it reads the answer), at most `REFUSAL_DRAIN_S`.
    """
    if reader.drained.done() or transport.is_closing():
        return  # the source has stopped sending already
    reader.drain()
    try:
        if transport.can_write_eof():
            transport.write_eof()
    except OSError:  # the source has gone already (it cancelled): nothing left to tell it
        return
    try:
        await asyncio.wait_for(asyncio.shield(reader.drained), REFUSAL_DRAIN_S)
    except TimeoutError:
        pass
