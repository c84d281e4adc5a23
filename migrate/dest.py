"""The destination server: an aiohttp application around a Receiver.

Routes (bodies are wire frames, answers JSON):

- `POST /migrations`            HELLO                      -> 201 {"id"}
- `POST /migrations/{id}/pass/{n}`  PAGES..., END_OF_PASS  -> 200 {"pages", "bytes"}
- `POST /migrations/{id}/complete`  DEVICE_STATE, PAGE_DIGESTS, COMPLETE
                                                           -> 200 RESUMED record
- `DELETE /migrations/{id}`     cancel: discard the image  -> 200
- `GET /status`

Handlers parse and delegate. One middleware turns a ProtocolError into its
status and `{error, detail}`, anything else into a logged 500; either way
the migration concerned is discarded, so no guest resumes after an error.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from migrate import wire
from migrate.errors import (
    ProtocolError,
    TruncatedMessage,
    Unauthorized,
    UnexpectedMessage,
    to_json,
)
from migrate.receiver import Incoming, Receiver

log = logging.getLogger("precopy.dest")

RECEIVER = web.AppKey("receiver", Receiver)
TOKEN = web.AppKey("token", str)
ON_FINISH = web.AppKey("on_finish", object)
MAX_BATCH_BODY = 64 << 20  # a 4096-page batch is 16 MiB; anything past this is an attack
HELLO_MAX_BODY = 1 << 20

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ProtocolError as err:
        log.warning("%s %s: %s: %s", request.method, request.path, err.code, err)
        _discard(request, f"{err.code}: {err}")
        return web.json_response(to_json(err), status=err.status)
    except (ConnectionError, asyncio.IncompleteReadError) as err:
        _discard(request, f"connection lost: {err!r}")
        raise
    except asyncio.CancelledError:
        _discard(request, "request cancelled (peer gone)")
        raise
    except web.HTTPException:
        raise
    except Exception as err:  # a bug of ours: log it whole, never resume
        log.exception("%s %s: internal error", request.method, request.path)
        _discard(request, f"internal error: {err!r}")
        return web.json_response({"error": "internal-error", "detail": repr(err)}, status=500)


def _discard(request: web.Request, why: str) -> None:
    receiver = request.app[RECEIVER]
    migration_id = request.match_info.get("id")
    current = receiver.current
    if current is not None and (migration_id is None or migration_id == current.id):
        if request.method == "POST" and request.path == "/migrations":
            return  # a refused hello does not touch the migration in progress
        receiver.finish(current, ok=False, why=why)
        _notify(request.app, ok=False)


def _notify(app: web.Application, *, ok: bool) -> None:
    callback = app.get(ON_FINISH)
    if callback is not None:
        callback(ok)


@web.middleware
async def token_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    expected = request.app.get(TOKEN)
    if expected:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if not hmac.compare_digest(given.encode(), expected.encode()):
            err = Unauthorized("missing or wrong token")
            return web.json_response(to_json(err), status=err.status)
    return await handler(request)


async def _read_all_frames(request: web.Request, max_body: int) -> list[tuple[wire.Header, bytes]]:
    frames = []
    async for frame in wire.read_frames(request.content, max_body=max_body):
        frames.append(frame)
    return frames


def _expect(frames: list, types: list[wire.MsgType]) -> None:
    got = [h.type for h, _ in frames]
    if got != types:
        names = ", ".join(t.name for t in types)
        seen = ", ".join(t.name for t in got) or "nothing"
        raise UnexpectedMessage(f"expected {names}; got {seen}")


async def post_hello(request: web.Request) -> web.Response:
    frames = await _read_all_frames(request, HELLO_MAX_BODY)
    _expect(frames, [wire.MsgType.HELLO])
    incoming = request.app[RECEIVER].hello(wire.decode_control(*frames[0]))
    return web.json_response({"id": incoming.id}, status=201)


def _pass_number(request: web.Request) -> int:
    text = request.match_info["n"]
    if not text.isdigit() or len(text) > 9:
        raise UnexpectedMessage(f"bad pass number {text!r}")
    return int(text)


async def post_pass(request: web.Request) -> web.Response:
    receiver = request.app[RECEIVER]
    incoming = receiver.get(request.match_info["id"])
    pass_no = _pass_number(request)
    receiver.check_pass(incoming, pass_no)
    incoming.streams += 1
    try:
        pages, nbytes = await _receive_stream(receiver, incoming, request, pass_no)
    finally:
        incoming.streams -= 1
    return web.json_response({"pass": pass_no, "pages": pages, "bytes": nbytes})


async def _receive_stream(
    receiver: Receiver, incoming: Incoming, request: web.Request, pass_no: int
) -> tuple[int, int]:
    pages = nbytes = 0
    ended = False
    async for header, body in wire.read_frames(request.content, max_body=MAX_BATCH_BODY):
        if ended:
            raise UnexpectedMessage("a frame after END_OF_PASS")
        if header.pass_no != pass_no:
            raise UnexpectedMessage(
                f"frame of pass {header.pass_no} in the stream of pass {pass_no}"
            )
        nbytes += wire.HEADER_SIZE + len(body)
        if header.type == wire.MsgType.PAGES:
            batch = wire.decode_pages(header, body, max_gfn=incoming.npages)
            receiver.apply(incoming, batch)
            pages += len(batch.gfns)
        elif header.type == wire.MsgType.END_OF_PASS:
            wire.decode_control(header, body)
            ended = True
        else:
            raise UnexpectedMessage(f"{header.type.name} in a page stream")
    if not ended:
        raise TruncatedMessage(f"stream of pass {pass_no} ended without END_OF_PASS")
    receiver.end_pass(incoming, pass_no)
    incoming.bytes_received += nbytes
    return pages, nbytes


async def post_complete(request: web.Request) -> web.Response:
    receiver = request.app[RECEIVER]
    incoming = receiver.get(request.match_info["id"])
    max_body = max(MAX_BATCH_BODY, 8 * incoming.npages)
    frames = await _read_all_frames(request, max_body)
    _expect(frames, [wire.MsgType.DEVICE_STATE, wire.MsgType.PAGE_DIGESTS, wire.MsgType.COMPLETE])
    device_state = wire.decode_device_state(*frames[0])
    digests = wire.decode_digests(*frames[1], npages=incoming.npages)
    wire.decode_control(*frames[2])
    # Digesting all of memory is heavy numpy work: keep the event loop free meanwhile.
    result = await asyncio.to_thread(receiver.verify, incoming, device_state, digests)
    _notify(request.app, ok=result["verified"])
    return web.json_response(result)


async def delete_migration(request: web.Request) -> web.Response:
    receiver = request.app[RECEIVER]
    incoming = receiver.get(request.match_info["id"])
    receiver.finish(incoming, ok=False, why="cancelled by the source")
    _notify(request.app, ok=False)
    return web.json_response({"status": "cancelled", "id": incoming.id})


async def get_status(request: web.Request) -> web.Response:
    return web.json_response(request.app[RECEIVER].status())


def make_app(
    *,
    max_memory_pages: int,
    token: str | None = None,
    on_finish: Callable[[bool], Any] | None = None,
) -> web.Application:
    """Build the destination application. `on_finish(ok)` is called after each migration."""
    app = web.Application(
        middlewares=[token_middleware, errors_middleware],
        client_max_size=HELLO_MAX_BODY,
    )
    app[RECEIVER] = Receiver(max_memory_pages=max_memory_pages)
    if token:
        app[TOKEN] = token
    if on_finish is not None:
        app[ON_FINISH] = on_finish
    app.router.add_post("/migrations", post_hello)
    app.router.add_post("/migrations/{id}/pass/{n}", post_pass)
    app.router.add_post("/migrations/{id}/complete", post_complete)
    app.router.add_delete("/migrations/{id}", delete_migration)
    app.router.add_get("/status", get_status)
    return app
