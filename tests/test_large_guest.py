"""Large guests end to end: 16 GiB in the normal suite, the 64 GiB bench point marked slow.

The 16 GiB guest is made to be quick: a 64 MiB working set (every other page
is never written, so a zero page on the wire), a link and max-bandwidth of
100 Gbit/s and 4096-page batches. Its destination is started exactly as
`precopy run` starts it, and must keep digests: the image would not be the
point of a guest this size.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from migrate import cli
from migrate.bench import scale
from migrate.config import load_scenario
from migrate.source.engine import migrate

GiB = 1 << 30
SIXTEEN_GIB = (
    "guest.memory=16GiB", "guest.vcpus=1", "guest.workload.kind=uniform",
    "guest.workload.working-set=64MiB", "guest.workload.rate=1000",
    "link.bandwidth=100Gbit/s", "migration.max-bandwidth=100Gbit/s", "migration.batch-pages=4096",
)


async def _stores_seen(url: str, done: asyncio.Task) -> set[str | None]:
    """The destination's store, from GET /status, for as long as the migration runs."""
    seen: set[str | None] = set()
    async with aiohttp.ClientSession() as session:
        while not done.done():
            try:
                async with session.get(f"{url}/status") as answer:
                    seen.add((await answer.json())["store"])
            except aiohttp.ClientError:  # --once: gone once the migration ended
                break
            await asyncio.wait([done], timeout=0.02)
    return seen


async def test_a_16gib_guest_migrates_and_verifies_into_a_digest_store():
    scenario = load_scenario(None, SIXTEEN_GIB)
    store = cli._run_store(scenario)
    assert store == "digests"
    dest = cli._start_destination(scenario, store)  # as `precopy run` starts it
    try:
        migration = asyncio.create_task(migrate(scenario, dest.url))
        seen = await _stores_seen(dest.url, migration)
        report = await migration
        assert dest.wait(timeout=30) == 0  # --once: it ended with a verified migration
    finally:
        dest.stop()
    assert report.status == "completed" and report.verified, report.error
    assert report.ram.total == 16 * GiB and report.lost_count == 0
    assert "digests" in seen and "image" not in seen


@pytest.mark.slow
def test_the_64gib_bench_point_migrates_and_verifies():
    """The bench's 64 GiB point (the default workload scaled): minutes, and ~1.5 GiB per
    process. Its speed and memory are bench figures (`precopy bench scale`), not asserted:
    only that it completes, verifies, and that the destination held digests, not the image."""
    result = scale.run_point(scale.scale_point(64))
    assert result["status"] == "completed" and result["verified"], result.get("error")
    assert result["store"] == "digests" and result["backing"] == "generated"
    assert result["destination-peak-rss-bytes"] < 8 * GiB  # the image alone would be 48 GiB
