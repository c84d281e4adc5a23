"""The destination's state: at most one incoming guest image, and the checks on it.

Plain synchronous code: the aiohttp handlers parse frames and hand them here.
A page is stored only if it comes from the same or a later pass than the
version already held, so batches of two passes racing on parallel channels
still leave the later version. Nothing resumes unless every page's digest
equals the source's.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from migrate import wire
from migrate.digest import diff_pages, memory_digest, page_digests
from migrate.errors import (
    BadControlMessage,
    MemoryTooLarge,
    MigrationBusy,
    PassOutOfOrder,
    UnexpectedMessage,
    UnknownMigration,
)

log = logging.getLogger("precopy.dest")


@dataclass
class Incoming:
    """One migration being received."""

    id: str
    npages: int
    hello: dict[str, Any]
    memory: np.ndarray
    page_pass: np.ndarray  # the pass each page's content came from (0: never received)
    passes_ended: int = 0
    pages_received: int = 0
    zero_pages: int = 0
    bytes_received: int = 0
    streams: int = 0  # page streams open now
    started: float = field(default_factory=time.monotonic)


def _int_field(info: dict[str, Any], key: str, low: int, high: int | None = None) -> int:
    value = info.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadControlMessage(f"HELLO field {key!r} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        raise BadControlMessage(f"HELLO field {key!r} = {value} is out of range")
    return value


class Receiver:
    def __init__(self, *, max_memory_pages: int) -> None:
        self.max_memory_pages = max_memory_pages
        self.current: Incoming | None = None
        self.completed = 0
        self.failed = 0

    def hello(self, info: dict[str, Any]) -> Incoming:
        """Start receiving a guest. Raise `MigrationBusy` if one is in progress,
        `MemoryTooLarge` past --max-memory, `BadControlMessage` for a bad hello."""
        if self.current is not None:
            raise MigrationBusy(f"migration {self.current.id} is in progress")
        if info.get("page-size") != wire.PAGE_SIZE:
            raise BadControlMessage(f"HELLO page-size must be {wire.PAGE_SIZE}")
        npages = _int_field(info, "memory-pages", 1)
        if npages > self.max_memory_pages:
            raise MemoryTooLarge(
                f"guest of {npages} pages exceeds --max-memory ({self.max_memory_pages} pages)"
            )
        incoming = Incoming(
            id=uuid.uuid4().hex[:12],
            npages=npages,
            hello=info,
            memory=np.zeros((npages, wire.PAGE_SIZE), dtype=np.uint8),
            page_pass=np.zeros(npages, dtype=np.uint32),
        )
        self.current = incoming
        log.info("migration %s: receiving %d pages", incoming.id, npages)
        return incoming

    def get(self, migration_id: str) -> Incoming:
        if self.current is None or self.current.id != migration_id:
            raise UnknownMigration(f"no migration {migration_id!r} in progress")
        return self.current

    def check_pass(self, incoming: Incoming, pass_no: int) -> None:
        """A stream may carry the current pass or a new one, never one already ended."""
        if pass_no <= incoming.passes_ended:
            raise PassOutOfOrder(
                f"pass {pass_no} already ended (last ended: {incoming.passes_ended})"
            )

    def apply(self, incoming: Incoming, batch: wire.PageBatch) -> None:
        """Store a decoded batch, keeping for each page the content of the latest pass."""
        self.check_pass(incoming, batch.pass_no)
        for gfns, content in ((batch.normal_gfns, batch.pages), (batch.zero_gfns, None)):
            newer = incoming.page_pass[gfns] <= batch.pass_no
            if not newer.all():
                gfns = gfns[newer]
                content = None if content is None else content[newer]
            if content is None:
                incoming.memory[gfns] = 0
            else:
                incoming.memory[gfns] = content
            incoming.page_pass[gfns] = batch.pass_no
        incoming.pages_received += len(batch.gfns)
        incoming.zero_pages += len(batch.zero_gfns)

    def end_pass(self, incoming: Incoming, pass_no: int) -> None:
        incoming.passes_ended = max(incoming.passes_ended, pass_no)

    def verify(self, incoming: Incoming, device_state: bytes, source: np.ndarray) -> dict[str, Any]:
        """Compare every page with the source's digest at pause; resume only if all match."""
        if incoming.streams:
            raise UnexpectedMessage("COMPLETE while page streams are still open")
        started = time.perf_counter()
        mine = page_digests(incoming.memory)
        lost = diff_pages(source, mine)
        verified = len(lost) == 0
        result = {
            "status": "resumed" if verified else "verification-failed",
            "verified": verified,
            "digest": memory_digest(mine),
            "lost-gfns": lost.tolist(),
            "pages-received": incoming.pages_received,
            "device-state-bytes": len(device_state),
            "verify-ms": (time.perf_counter() - started) * 1e3,
        }
        self.finish(incoming, ok=verified,
                    why="resumed" if verified else f"{len(lost)} pages differ from the source")
        return result

    def finish(self, incoming: Incoming, *, ok: bool, why: str) -> None:
        """End this migration: on failure the partial image is discarded."""
        if self.current is not incoming:
            return
        self.current = None
        if ok:
            self.completed += 1
            log.info("migration %s: %s", incoming.id, why)
        else:
            self.failed += 1
            log.warning("migration %s: discarded (%s)", incoming.id, why)

    def status(self) -> dict[str, Any]:
        current = self.current
        return {
            "busy": current is not None,
            "migration": None if current is None else current.id,
            "completed": self.completed,
            "failed": self.failed,
        }
