"""The destination's state: at most one incoming guest, and the checks on it.

Plain synchronous code: the aiohttp handlers parse frames and hand them here.
A page is stored only if it comes from the same or a later pass than the
version already held, so batches of two passes racing on parallel channels
still leave the later version. Nothing resumes unless every page's digest
equals the source's. What is kept of each page, its bytes or its digest, is
the `PageStore`'s (`migrate.dest.store`); the checks are the same for both.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from migrate import wire
from migrate.dest.store import STORES, DigestStore, ImageStore, PageStore, choose
from migrate.digest import diff_pages, memory_digest
from migrate.errors import (
    BadControlMessage,
    MemoryTooLarge,
    MigrationBusy,
    PassOutOfOrder,
    UnexpectedMessage,
    UnknownMigration,
)

log = logging.getLogger("precopy.dest")
LOST_GFNS_LISTED = 10_000  # a wholly broken run of a big guest would otherwise answer in GBs
DISCARDS_REMEMBERED = 16  # ids whose late requests (a cancel, other channels) are expected


@dataclass
class Incoming:
    """One migration being received."""

    id: str
    npages: int
    hello: dict[str, Any]
    store: PageStore
    passes_ended: int = 0
    # Passes that some of their channels have ended: pass -> (channels, those that ended).
    ending: dict[int, tuple[int, set[int]]] = field(default_factory=dict)
    pages_received: int = 0
    zero_pages: int = 0
    bytes_received: int = 0
    streams: int = 0  # page streams open now
    completing: bool = False  # COMPLETE received: no more pages, no second COMPLETE
    started: float = field(default_factory=time.monotonic)

    @property
    def page_pass(self) -> np.ndarray:
        """The pass each page's content came from (0: never received)."""
        return self.store.page_pass

    @property
    def memory(self) -> np.ndarray:
        """The image received (the image store only)."""
        return self.store.memory  # type: ignore[attr-defined]

    @property
    def zero(self) -> np.ndarray:
        """Whether each page is known to hold zeros (the image store only)."""
        return self.store.zero  # type: ignore[attr-defined]


def _int_field(info: dict[str, Any], key: str, low: int, high: int | None = None) -> int:
    value = info.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadControlMessage(f"HELLO field {key!r} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        raise BadControlMessage(f"HELLO field {key!r} = {value} is out of range")
    return value


class Receiver:
    """The destination's one guest at a time: HELLO starts it, `finish` ends it.

    *on_finish(ok)* is called once per migration, whoever ends it (COMPLETE, a
    cancel, a refusal, the watchdog), after its one log line. *store* is
    `image`, `digests` or `auto` (the image while it fits in *max_memory_pages*
    pages of host memory, else the digests); --max-memory bounds what the
    chosen store holds, not the guest's size.
    """

    def __init__(self, *, max_memory_pages: int, store: str = "image",
                 on_finish: Callable[[bool], object] | None = None) -> None:
        if store not in STORES:
            raise ValueError(f"unknown store {store!r} (expected one of {', '.join(STORES)})")
        self.max_memory_pages = max_memory_pages
        self.store = store
        self.on_finish = on_finish
        self.current: Incoming | None = None
        self.completed = 0
        self.failed = 0
        self._discarded: deque[str] = deque(maxlen=DISCARDS_REMEMBERED)

    def hello(self, info: dict[str, Any]) -> Incoming:
        """Start receiving a guest. Raise `MigrationBusy` if one is in progress,
        `MemoryTooLarge` past --max-memory, `BadControlMessage` for a bad hello."""
        if self.current is not None:
            raise MigrationBusy(f"migration {self.current.id} is in progress")
        if info.get("page-size") != wire.PAGE_SIZE:
            raise BadControlMessage(f"HELLO page-size must be {wire.PAGE_SIZE}")
        npages = _int_field(info, "memory-pages", 1)
        max_bytes = self.max_memory_pages * wire.PAGE_SIZE
        kind = choose(self.store, npages, max_bytes)
        if kind is None:
            raise MemoryTooLarge(self._too_large(npages))
        try:
            store = kind(npages)
        except MemoryError:  # --max-memory above what this host can give
            raise MemoryTooLarge(f"guest of {npages} pages: this host cannot allocate its "
                                 f"{kind.name} store ({kind.held_bytes(npages)} bytes); "
                                 "lower --max-memory or use --store digests") from None
        incoming = Incoming(id=uuid.uuid4().hex[:12], npages=npages, hello=info, store=store)
        self.current = incoming
        log.info("migration %s: receiving %d pages (store: %s)", incoming.id, npages, kind.name)
        return incoming

    def _too_large(self, npages: int) -> str:
        """Why a guest of *npages* is refused: what the store would hold, and the bound."""
        if self.store == "image":
            what, need = "its image", ImageStore.held_bytes(npages)
            hint = "; --store digests holds 12 bytes a page"
        else:
            what, need, hint = "its digests", DigestStore.held_bytes(npages), ""
        return (f"guest of {npages} pages exceeds --max-memory ({self.max_memory_pages} pages): "
                f"{what} would need {need} bytes{hint}")

    def get(self, migration_id: str) -> Incoming:
        if self.current is None or self.current.id != migration_id:
            raise UnknownMigration(f"no migration {migration_id!r} in progress")
        return self.current

    def was_discarded(self, migration_id: str | None) -> bool:
        """Whether *migration_id* is one of the last migrations discarded here."""
        return migration_id in self._discarded

    def check_pass(self, incoming: Incoming, pass_no: int) -> None:
        """A stream may carry the current pass or a new one, never one already ended.

        Raise `UnknownMigration` once the migration has been discarded (another
        channel was refused: nothing more is stored), `UnexpectedMessage` once
        COMPLETE has been received, `PassOutOfOrder` for a pass already ended.
        """
        if incoming is not self.current:
            raise UnknownMigration(f"migration {incoming.id} was discarded")
        if incoming.completing:
            raise UnexpectedMessage(f"pass {pass_no} after COMPLETE")
        if pass_no <= incoming.passes_ended:
            raise PassOutOfOrder(
                f"pass {pass_no} already ended (last ended: {incoming.passes_ended})"
            )

    def apply(self, incoming: Incoming, batch: wire.PageBatch) -> None:
        """Store a decoded batch, keeping for each page the content of the latest pass.

        A page already holding a later pass's content keeps it, so batches of
        two passes racing on parallel channels leave the later version in
        whatever order they arrive.
        """
        self.check_pass(incoming, batch.pass_no)
        store = incoming.store
        if len(batch.normal_gfns):
            keep = _not_newer(store.page_pass, batch.normal_gfns, batch.pass_no)
            store.put(batch.normal_gfns[keep], batch.pages[keep], batch.pass_no)
        if len(batch.zero_gfns):
            keep = _not_newer(store.page_pass, batch.zero_gfns, batch.pass_no)
            store.put_zero(batch.zero_gfns[keep], batch.pass_no)
        incoming.pages_received += len(batch.gfns)
        incoming.zero_pages += len(batch.zero_gfns)

    def end_pass(self, incoming: Incoming, pass_no: int, *, channel: int = 0,
                 channels: int = 1) -> None:
        """Count `channel` (of `channels`) done with `pass_no`; the pass ends once all are.

        Raise `BadControlMessage` if the pass's channels disagree on how many
        they are, `UnexpectedMessage` for a channel that ends the pass twice,
        `PassOutOfOrder` for a pass already ended, or one that ends while an
        earlier pass still waits for some of its channels.
        """
        self.check_pass(incoming, pass_no)
        expected, done = incoming.ending.setdefault(pass_no, (channels, set()))
        if channels != expected:
            raise BadControlMessage(f"END_OF_PASS of pass {pass_no} says {channels} channels; "
                                    f"another channel said {expected}")
        if channel in done:
            raise UnexpectedMessage(f"channel {channel} ended pass {pass_no} twice")
        done.add(channel)
        if len(done) < expected:
            return
        del incoming.ending[pass_no]
        if any(p < pass_no for p in incoming.ending):
            raise PassOutOfOrder(f"pass {pass_no} ended while pass {min(incoming.ending)} "
                                 "still waits for some of its channels")
        incoming.passes_ended = max(incoming.passes_ended, pass_no)

    def begin_complete(self, incoming: Incoming) -> None:
        """Take COMPLETE: from now on the image is frozen. Raise `UnexpectedMessage` for a
        second COMPLETE, or while page streams are still open."""
        if incoming.completing:
            raise UnexpectedMessage("a second COMPLETE")
        if incoming.streams:
            raise UnexpectedMessage("COMPLETE while page streams are still open")
        incoming.completing = True

    def verify(self, incoming: Incoming, device_state: bytes, source: np.ndarray) -> dict[str, Any]:
        """Compare every page with the source's digest at pause.

        The caller resumes (`finish(ok=True)`) only if all match and the source
        is still there to hear it.
        """
        started = time.perf_counter()
        mine = incoming.store.digests()
        lost = diff_pages(source, mine)
        verified = len(lost) == 0
        result = {
            "status": "resumed" if verified else "verification-failed",
            "verified": verified,
            "digest": memory_digest(mine),
            "lost-gfns": lost[:LOST_GFNS_LISTED].tolist(),  # enough to debug, bounded in size
            "lost-count": len(lost),
            "pages-received": incoming.pages_received,
            "device-state-bytes": len(device_state),
            "verify-ms": (time.perf_counter() - started) * 1e3,
        }
        return result

    def finish(self, incoming: Incoming, *, ok: bool, why: str) -> bool:
        """End this migration: on failure the partial image is discarded.

        Return False if it had already ended (discarded meanwhile).
        """
        if self.current is not incoming:
            return False
        self.current = None
        if ok:
            self.completed += 1
            log.info("migration %s: %s", incoming.id, why)
        else:
            self.failed += 1
            self._discarded.append(incoming.id)
            log.warning("migration %s: discarded (%s)", incoming.id, why)
        if self.on_finish is not None:
            self.on_finish(ok)
        return True

    def status(self) -> dict[str, Any]:
        current = self.current
        return {
            "busy": current is not None,
            "migration": None if current is None else current.id,
            "store": None if current is None else current.store.name,
            "streams": 0 if current is None else current.streams,
            "pages-received": 0 if current is None else current.pages_received,
            "completed": self.completed,
            "failed": self.failed,
        }


def _not_newer(page_pass: np.ndarray, gfns: np.ndarray, pass_no: int) -> slice | np.ndarray:
    """Select the *gfns* whose page holds no later pass's content than *pass_no*.

    A whole slice in the usual case (no race between passes), so that the
    caller's selection is a view, not a copy.
    """
    keep = page_pass[gfns] <= pass_no
    return slice(None) if keep.all() else keep

