"""The destination server: an aiohttp application around a Receiver.

Routes (bodies are wire frames, answers JSON):

- `POST /migrations`            HELLO                      -> 201 {"id"}
- `POST /migrations/{id}/pass/{n}`  PAGES..., END_OF_PASS  -> 200 {"pages", "bytes"}
- `POST /migrations/{id}/complete`  DEVICE_STATE, PAGE_DIGESTS, COMPLETE
                                                           -> 200 RESUMED record
- `DELETE /migrations/{id}`     cancel: discard the image  -> 200
- `GET /status`

Handlers parse and delegate. `refusal` is the one place an error becomes
an answer, as aiohttp's `_handle_request` is: a ProtocolError is its status
and `{error, detail}`, anything else a logged 500; either way the migration
concerned is discarded, so no guest resumes after an error. The error
middleware answers with it in JSON, an upgraded page channel in an ERROR
frame. Each refusal is one log line. A `Watchdog` discards the migration of a
source that falls silent (`idle_timeout_s`), and COMPLETE resumes only
while the source is still connected to hear it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from migrate import wire
from migrate.dest.receiver import Incoming, Receiver
from migrate.dest.stream import PassStream, serve_upgraded, wants_upgrade
from migrate.dest.watchdog import Watchdog
from migrate.errors import (
    MalformedBody,
    ProtocolError,
    Unauthorized,
    UnexpectedMessage,
    UnknownMigration,
    to_json,
)

log = logging.getLogger("precopy.dest")

RECEIVER = web.AppKey("receiver", Receiver)
TOKEN = web.AppKey("token", str)
MAX_BATCH_BODY = 64 << 20  # a 4096-page batch is 16 MiB; anything past this is an attack
HELLO_MAX_BODY = 1 << 20
IDLE_TIMEOUT_S = 60.0  # a source silent this long is gone: its migration is discarded

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Refusal(NamedTuple):
    """How a failed request is answered: a status and a `{error, detail}` body."""

    status: int
    body: dict[str, str]
    headers: dict[str, str]

    def error_frame_body(self) -> dict[str, Any]:
        """The body of the ERROR frame an upgraded channel answers with: the status inside."""
        return {**self.body, "status": self.status}


def refusal(request: web.Request, err: Exception) -> Refusal:
    """Turn what a request raised into its answer, logging one line and discarding its migration.

    A `ProtocolError` is its own status; a body whose HTTP framing aiohttp
    cannot parse is `MalformedBody`; a lost connection is a 400 nobody reads
    (answering keeps aiohttp from logging a traceback); anything else is a bug
    of ours: logged whole, a 500. The migration the request names is
    discarded in every case but `Unauthorized`: a request without the token
    speaks for no migration, so it cannot end one.
    """
    if isinstance(err, HttpProcessingError):
        err = MalformedBody(err.message)
    if isinstance(err, Unauthorized):
        log.warning("%s %s: %s: %s", request.method, request.path, err.code, err)
        return Refusal(err.status, to_json(err), {"WWW-Authenticate": "Bearer"})
    if isinstance(err, ProtocolError):
        _refuse(request, f"{err.code}: {err}")
        return Refusal(err.status, to_json(err), {})
    if isinstance(err, ConnectionError | asyncio.IncompleteReadError):
        _refuse(request, f"connection lost: {err!r}")
        return Refusal(400, {"error": "connection-lost", "detail": repr(err)}, {})
    log.error("%s %s: internal error", request.method, request.path, exc_info=err)
    _discard(request, f"internal error: {err!r}")
    return Refusal(500, {"error": "internal-error", "detail": repr(err)}, {})


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every error of the handlers and middlewares inside it through `refusal`.

    Cancellation is always re-raised (after its line), and aiohttp's own HTTP
    exceptions (a 404 route) are its to answer.
    """
    try:
        return await handler(request)
    except asyncio.CancelledError:
        _refuse(request, "request cancelled (the server is shutting down)")
        raise
    except web.HTTPException:
        raise
    except Exception as err:
        answer = refusal(request, err)
        return web.json_response(answer.body, status=answer.status, headers=answer.headers)


def _refuse(request: web.Request, why: str) -> None:
    """One log line per refusal: the discard's, if the request named the migration in progress.

    None for a request that names a migration already discarded (the source's
    cancel, its other channels closing): they follow from the discard, whose
    line said why (debug level keeps them for `--debug`).
    """
    why = f"{request.method} {request.path}: {why}"
    if _discard(request, why):
        return
    if request.app[RECEIVER].was_discarded(request.match_info.get("id")):
        log.debug("%s (after its discard)", why)
    else:
        log.warning("%s", why)


def _current_named(request: web.Request) -> Incoming | None:
    """The migration in progress, if this request names it (a hello names none)."""
    current = request.app[RECEIVER].current
    if current is not None and request.match_info.get("id") == current.id:
        return current
    return None


def _discard(request: web.Request, why: str) -> bool:
    """Discard the migration in progress if the request names it; return whether it did."""
    current = _current_named(request)
    return current is not None and request.app[RECEIVER].finish(current, ok=False, why=why)


@web.middleware
async def token_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    expected = request.app.get(TOKEN)
    if expected:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise Unauthorized("missing or wrong token")
    return await handler(request)


WATCHDOG = web.AppKey("watchdog", Watchdog)


@web.middleware
async def watch_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if _current_named(request) is None:
        return await handler(request)
    watchdog = request.app[WATCHDOG]
    watchdog.enter(request)
    try:
        return await handler(request)
    except (ConnectionError, asyncio.IncompleteReadError):
        stalled = watchdog.stalled(request)
        if stalled is None:
            raise
        raise stalled from None
    finally:
        watchdog.leave(request)


async def _run_watchdog(app: web.Application) -> AsyncIterator[None]:
    watchdog = app[WATCHDOG]

    async def tick() -> None:
        while True:
            await asyncio.sleep(min(1.0, watchdog.idle_s / 4))
            watchdog.check(app[RECEIVER])

    task = asyncio.create_task(tick())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _read_expected(
    request: web.Request, max_body: int, types: list[wire.MsgType]
) -> list[tuple[wire.Header, bytes]]:
    """Read exactly the frames `types`, in order; refuse any other as soon as its header shows,
    so a body never holds more than len(types) frames in memory."""
    frames: list[tuple[wire.Header, bytes]] = []
    got: list[wire.MsgType] = []

    def refuse() -> UnexpectedMessage:
        names = ", ".join(t.name for t in types)
        seen = ", ".join(t.name for t in got) or "nothing"
        return UnexpectedMessage(f"expected {names}; got {seen}")

    async for header, body in wire.read_frames(request.content, max_body=max_body):
        got.append(header.type)
        if len(frames) == len(types) or header.type != types[len(frames)]:
            raise refuse()
        frames.append((header, body))
    if len(frames) != len(types):
        raise refuse()
    return frames


async def post_hello(request: web.Request) -> web.Response:
    frames = await _read_expected(request, HELLO_MAX_BODY, [wire.MsgType.HELLO])
    incoming = request.app[RECEIVER].hello(wire.decode_control(*frames[0]))
    return web.json_response({"id": incoming.id}, status=201)


def _pass_number(request: web.Request) -> int:
    text = request.match_info["n"]
    if not (text.isascii() and text.isdigit()) or len(text) > 9:  # "²".isdigit() is True
        raise UnexpectedMessage(f"bad pass number {text!r}")
    return int(text)


async def post_pass(request: web.Request) -> web.StreamResponse:
    """One channel's stream of one pass: a chunked body, or an upgraded connection."""
    receiver = request.app[RECEIVER]
    incoming = receiver.get(request.match_info["id"])
    pass_no = _pass_number(request)
    receiver.check_pass(incoming, pass_no)
    stream = PassStream(receiver, incoming, pass_no, max_body=MAX_BATCH_BODY)
    incoming.streams += 1
    try:
        if wants_upgrade(request):
            return await serve_upgraded(request, stream, idle_s=request.app[WATCHDOG].idle_s,
                                        refuse=lambda err: refusal(request, err).error_frame_body())
        async for header, body in wire.read_frames(request.content, max_body=MAX_BATCH_BODY):
            stream.frame(header, body)
        return web.json_response(stream.close())
    finally:
        incoming.streams -= 1


async def post_complete(request: web.Request) -> web.Response:
    receiver = request.app[RECEIVER]
    incoming = receiver.get(request.match_info["id"])
    max_body = max(MAX_BATCH_BODY, 8 * incoming.npages)
    types = [wire.MsgType.DEVICE_STATE, wire.MsgType.PAGE_DIGESTS, wire.MsgType.COMPLETE]
    frames = await _read_expected(request, max_body, types)
    device_state = wire.decode_device_state(*frames[0])
    digests = wire.decode_digests(*frames[1], npages=incoming.npages)
    wire.decode_control(*frames[2])
    receiver.begin_complete(incoming)
    # Digesting all of memory is heavy numpy work: keep the event loop free meanwhile.
    result = await asyncio.to_thread(receiver.verify, incoming, device_state, digests)
    if receiver.current is not incoming:  # a DELETE, or the watchdog, came first
        raise UnknownMigration(f"migration {incoming.id} was discarded while it was verified")
    verified = result["verified"]
    if verified and (request.transport is None or request.transport.is_closing()):
        # The source gave up waiting and resumes its guest: never run a second copy here.
        verified = False
        why = "verified, but the source left before it could hear RESUMED"
        result = {**result, "status": "not-resumed", "resumed": False}
    else:
        why = "resumed" if verified else f"{result['lost-count']} pages differ from the source"
    receiver.finish(incoming, ok=verified, why=why)
    return web.json_response(result)


async def delete_migration(request: web.Request) -> web.Response:
    receiver = request.app[RECEIVER]
    incoming = receiver.get(request.match_info["id"])
    receiver.finish(incoming, ok=False, why="cancelled by the source")
    return web.json_response({"status": "cancelled", "id": incoming.id})


async def get_status(request: web.Request) -> web.Response:
    return web.json_response(request.app[RECEIVER].status())


def make_app(
    *,
    max_memory_pages: int,
    store: str = "image",
    token: str | None = None,
    on_finish: Callable[[bool], Any] | None = None,
    idle_timeout_s: float = IDLE_TIMEOUT_S,
) -> web.Application:
    """Build the destination application. `on_finish(ok)` is called after each migration;
    a source silent for `idle_timeout_s` loses its migration; *store* is the `Receiver`'s."""
    app = web.Application(
        middlewares=[errors_middleware, token_middleware, watch_middleware],
        client_max_size=HELLO_MAX_BODY,
    )
    app[RECEIVER] = Receiver(max_memory_pages=max_memory_pages, store=store,
                             on_finish=on_finish)
    app[WATCHDOG] = Watchdog(idle_timeout_s)
    app.cleanup_ctx.append(_run_watchdog)
    if token:
        app[TOKEN] = token
    app.router.add_post("/migrations", post_hello)
    app.router.add_post("/migrations/{id}/pass/{n}", post_pass)
    app.router.add_post("/migrations/{id}/complete", post_complete)
    app.router.add_delete("/migrations/{id}", delete_migration)
    app.router.add_get("/status", get_status)
    return app
