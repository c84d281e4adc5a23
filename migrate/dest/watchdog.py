"""The destination's watchdog: a source that falls silent loses its migration."""

from __future__ import annotations

import time
from dataclasses import dataclass

from aiohttp import web

from migrate.dest.receiver import Receiver
from migrate.errors import SourceTimeout


@dataclass
class _Watched:
    """A request in flight for the migration in progress, and when its body last moved."""

    request: web.Request
    total_bytes: int
    since: float
    stalled: SourceTimeout | None = None


class Watchdog:
    """Discard the migration in progress when its source falls silent (killed, stopped, gone).

    A request of that migration whose body brings no byte for `idle_s` has
    its connection aborted and fails with `SourceTimeout`; with no request of
    it in flight, the migration is discarded `idle_s` after the last one
    ended (or after its hello).
    """

    def __init__(self, idle_s: float) -> None:
        self.idle_s = idle_s
        self.inflight: dict[int, _Watched] = {}
        self.last_seen = 0.0

    def enter(self, request: web.Request) -> None:
        self.inflight[id(request)] = _Watched(request, request.content.total_bytes,
                                              time.monotonic())

    def leave(self, request: web.Request) -> None:
        self.last_seen = time.monotonic()
        del self.inflight[id(request)]

    def stalled(self, request: web.Request) -> SourceTimeout | None:
        """Why the request's connection was cut off, if the watchdog did it."""
        return self.inflight[id(request)].stalled

    def check(self, receiver: Receiver) -> None:
        """Cut off stalled bodies; discard an idle migration."""
        now = time.monotonic()
        for watched in self.inflight.values():
            content, transport = watched.request.content, watched.request.transport
            if content.total_bytes != watched.total_bytes:
                watched.total_bytes, watched.since = content.total_bytes, now
            elif (not content.is_eof() and now - watched.since > self.idle_s
                  and watched.stalled is None and transport is not None):
                # Aborting wakes the handler with a ConnectionError; leave() names the cause.
                watched.stalled = SourceTimeout(f"no bytes from the source for {self.idle_s:g} s")
                transport.abort()
        current = receiver.current
        if current is None or self.inflight:
            return
        if now - max(self.last_seen, current.started) > self.idle_s:
            receiver.finish(current, ok=False,
                            why=f"no request from the source for {self.idle_s:g} s")
