"""The source's data path: a pass's pages, read from guest memory and sent over N channels.

Like QEMU's multifd, the batches of a pass are handed out in order to
whichever channel asks for the next one, and each batch is read from guest
memory at the moment it is handed out (`before_read` lets the guest run up to
then). Nothing else happens between reading a batch and accounting for its
bytes on the clock, so with the virtual clock batch k is read at the same
model time whatever channel carries it: a run is deterministic for any
number of channels.

What the virtual clock models:

- the link: every batch's wire bytes go through `Link.transfer`, one
  timeline shared by all channels, so N channels carrying B bytes take
  B / bandwidth, as one would (they share the link; the clock's calls never
  suspend, so concurrent channels cannot interleave inside one);
- lz4: compressing costs the cost table's `lz4_page_shrunk_ns` per page fed
  to lz4 when the batch shrank (text-like memory), `lz4_page_raw_ns` when it did not
  (lz4 gives up fast on random data), spread over the channels (QEMU
  compresses in its multifd threads) and overlapped with the link, as a
  pipeline runs at its slowest stage: a batch takes
  max(wire bytes / bandwidth, pages x cost per page / channels).
  Decompression at the destination is not modeled (lz4 decodes several times
  faster than it encodes). With the wall clock the real costs are simply there
  (`Clock.host_work`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from migrate import wire
from migrate.config.costs import QemuCosts
from migrate.source.channel import PageChannel
from migrate.source.client import DestinationClient, DestinationError
from migrate.source.link import Link
from vmmodel import CostTable, GuestMemory

DEFAULT_COSTS = CostTable()
NO_QEMU_COSTS = QemuCosts()

YIELD_EVERY_BATCHES = 64  # let other tasks (channels, a cancel) run at least this often


@dataclass
class PassTraffic:
    """What one pass put on the wire."""

    pages: int = 0
    zero: int = 0
    normal: int = 0
    bytes: int = 0
    compressed_bytes: int = 0  # payload bytes on the wire of the batches lz4 shrank
    compressed_raw_bytes: int = 0  # the same batches' payload before lz4
    send_ns: float = 0.0
    channels: int = 0

    def add(self, frame: wire.PagesFrame) -> None:
        self.pages += frame.n_pages
        self.zero += frame.n_zero
        self.normal += frame.n_normal
        self.bytes += frame.nbytes
        if frame.compressed:
            self.compressed_bytes += frame.payload_wire_bytes
            self.compressed_raw_bytes += frame.payload_raw_bytes


async def _account(link: Link, frame: wire.PagesFrame, *, compress: bool,
                   channels: int, costs: CostTable, qemu_ns: float = 0.0) -> None:
    """Let the batch's time pass on the link's clock (see the module docstring).

    `qemu_ns`: the migration thread's modeled time for the batch (QEMU's cost table),
    a stage of the same pipeline; modeled, so it passes on any clock.
    """
    link_ns = await link.transfer(frame.nbytes)
    if qemu_ns > link_ns:
        await link.clock.elapse(qemu_ns - link_ns)
        link_ns = qemu_ns
    if compress and frame.n_normal:
        per_page = costs.lz4_page_shrunk_ns if frame.compressed else costs.lz4_page_raw_ns
        cpu_ns = frame.n_normal * per_page / channels
        if cpu_ns > link_ns:  # the pipeline's slowest stage is lz4
            await link.clock.host_work(cpu_ns - link_ns)


async def send_pass(
    client: DestinationClient,
    migration_id: str,
    pass_no: int,
    gfns: np.ndarray,
    *,
    memory: np.ndarray | GuestMemory,
    link: Link,
    batch_pages: int,
    channels: int = 1,
    compress: bool = False,
    costs: CostTable = DEFAULT_COSTS,
    before_read: Callable[[], None] | None = None,
) -> PassTraffic:
    """Send the pages `gfns` of `memory` as pass `pass_no` over up to `channels` channels.

    `memory` is the guest's backing, or an (npages, 4096) array: pages are
    gathered in place from an array, else generated straight into each batch.

    Return the pass's traffic once every channel's END_OF_PASS has been
    answered. Raise `DestinationError` if a channel fails or the destination
    stored another number of pages than its channel sent; the other channels
    are then closed.
    """
    traffic = PassTraffic()
    n_batches = -(-len(gfns) // batch_pages)
    n_channels = max(1, min(channels, n_batches))
    traffic.channels = n_channels
    starts = iter(range(0, len(gfns), batch_pages))  # shared: the next batch to hand out
    path = f"/migrations/{migration_id}/pass/{pass_no}"
    clock = link.clock
    started_ns = clock.now_ns
    opened = await _open_channels(client, path, n_channels)

    async def run(index: int, channel: PageChannel) -> None:
        sent = batches = 0
        for start in starts:
            if before_read is not None:
                before_read()
            batch = gfns[start : start + batch_pages]
            frame = _encode(pass_no, memory, batch, compress)
            await _account(link, frame, compress=compress, channels=n_channels, costs=costs)
            traffic.add(frame)
            sent += frame.n_pages
            batches += 1
            await channel.send(frame.parts)
            if not batches % YIELD_EVERY_BATCHES:  # a send the socket takes at once never yields
                await asyncio.sleep(0)
        # END_OF_PASS is control, as hello is: neither its bytes nor its time are the pass's
        # (counting its bytes alone put every pass's rate above the link).
        end = wire.encode_control(wire.MsgType.END_OF_PASS, pass_no,
                                  {"pages": sent, "channel": index, "channels": n_channels})
        answer = await channel.finish(end)
        if answer.get("pages") != sent:
            raise DestinationError(f"pass {pass_no}, channel {index}: the destination stored "
                                   f"{answer.get('pages')} pages, {sent} were sent")

    try:
        await _gather_or_cancel([asyncio.ensure_future(run(i, ch)) for i, ch in enumerate(opened)])
    finally:
        for channel in opened:
            channel.close()
    await link.drain()  # the wall clock's link may still be carrying the last window
    traffic.send_ns = clock.now_ns - started_ns
    return traffic


def _encode(pass_no: int, memory: np.ndarray | GuestMemory, gfns: np.ndarray,
            compress: bool) -> wire.PagesFrame:
    """One batch's frame: gathered from the backing's array if it has one, else generated."""
    array = memory if isinstance(memory, np.ndarray) else memory.array
    if array is not None:
        return wire.encode_gathered(pass_no, array, gfns, compress=compress)
    return wire.encode_read(pass_no, gfns, memory.zero_mask(gfns), memory.read, compress=compress)


async def _open_channels(client: DestinationClient, path: str, n: int) -> list[PageChannel]:
    """Open `n` channels at once; if one fails, close those that opened, then re-raise."""
    tasks = [asyncio.ensure_future(PageChannel.open(client.base_url, path, token=client.token,
                                                    timeout_s=client.timeout_s))
             for _ in range(n)]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, PageChannel):
                outcome.close()
        raise


async def _gather_or_cancel(tasks: list[asyncio.Future]) -> None:
    """Wait for all `tasks`; on the first failure (or a cancel) cancel the rest, then re-raise."""
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class PassSender:
    """One pass sent a batch at a time, as QEMU's migration thread sends between syncs.

    The engine decides each batch (how many pages the rate limit and MAX_WAIT
    leave it); the sender reads it from guest memory, lets its time pass and
    hands it to the pass's channels in turn, opening them at the first batch.
    A pass that sent nothing puts nothing on the wire.
    """

    def __init__(self, client: DestinationClient, migration_id: str, pass_no: int, *,
                 memory: np.ndarray | GuestMemory, link: Link, channels: int = 1,
                 compress: bool = False, costs: CostTable = DEFAULT_COSTS,
                 qemu: QemuCosts = NO_QEMU_COSTS) -> None:
        self.client = client
        self.pass_no = pass_no
        self.memory = memory
        self.link = link
        self.channels = channels
        self.compress = compress
        self.costs = costs
        self.qemu = qemu
        self.path = f"/migrations/{migration_id}/pass/{pass_no}"
        self.traffic = PassTraffic()
        self._opened: list[PageChannel] = []
        self._sent: list[int] = []
        self._batches = 0
        self._started_ns = 0.0

    async def send(self, gfns: np.ndarray, *, guest_stopped: bool = False) -> wire.PagesFrame:
        """Read, time and send one batch; return its frame (its bytes, its page kinds)."""
        if not self._opened:
            self._started_ns = self.link.clock.now_ns
            self._opened = await _open_channels(self.client, self.path, self.channels)
            self._sent = [0] * len(self._opened)
        frame = _encode(self.pass_no, self.memory, gfns, self.compress)
        await _account(self.link, frame, compress=self.compress, channels=len(self._opened),
                       costs=self.costs, qemu_ns=qemu_send_ns(self.qemu, frame, guest_stopped))
        self.traffic.add(frame)
        index = self._batches % len(self._opened)
        self._sent[index] += frame.n_pages
        self._batches += 1
        await self._opened[index].send(frame.parts)
        if not self._batches % YIELD_EVERY_BATCHES:
            await asyncio.sleep(0)
        return frame

    async def finish(self) -> PassTraffic:
        """END_OF_PASS on every channel; return the pass's traffic once all are answered.

        Raise `DestinationError` if a channel fails or the destination stored another
        number of pages than its channel sent.
        """
        try:
            await _gather_or_cancel([asyncio.ensure_future(self._end(i)) for i in
                                     range(len(self._opened))])
        finally:
            self.close()
        await self.link.drain()  # the wall clock's link may still be carrying the last window
        if self._opened:  # from the first batch to the last byte carried
            self.traffic.send_ns = self.link.clock.now_ns - self._started_ns
        self.traffic.channels = len(self._opened)
        return self.traffic

    async def _end(self, index: int) -> None:
        sent = self._sent[index]
        end = wire.encode_control(wire.MsgType.END_OF_PASS, self.pass_no,
                                  {"pages": sent, "channel": index,
                                   "channels": len(self._opened)})
        answer = await self._opened[index].finish(end)
        if answer.get("pages") != sent:
            raise DestinationError(f"pass {self.pass_no}, channel {index}: the destination "
                                   f"stored {answer.get('pages')} pages, {sent} were sent")

    def close(self) -> None:
        for channel in self._opened:
            channel.close()


def qemu_send_ns(qemu: QemuCosts, frame: wire.PagesFrame, guest_stopped: bool) -> float:
    """The migration thread's own time for a batch (QEMU's cost table)."""
    if guest_stopped:
        return frame.n_pages * qemu.stopped_page_ns
    return frame.n_normal * qemu.page_ns + frame.n_zero * qemu.zero_page_ns
