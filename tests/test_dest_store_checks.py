"""Every check of the destination, with the digest store: the bad-input tests against a
`precopy dest --store digests`, and the page-stream fuzz run differentially (the same
bodies into an image and a digest receiver: the same refusals, the same pages kept).

`tests/test_bad_input.py` and `tests/test_fuzz_wire.py` run with the image store.
"""

from __future__ import annotations

import pytest
from hypothesis import given

from migrate import wire
from migrate.dest.receiver import Receiver
from migrate.dest.server import MAX_BATCH_BODY
from migrate.dest.stream import PassStream
from migrate.digest import page_digests
from migrate.errors import ProtocolError
from tests import test_bad_input as bad
from tests import test_fuzz_wire as fuzz
from tests import wire_oracle as oracle
from tests.peers import LoggedDestination, hello_frame

# The bad-input tests that drive a real destination through `dest` (as image: test_bad_input).
from tests.test_bad_input import (  # noqa: F401  (collected here, with this module's `dest`)
    peer,
    test_bad_complete,
    test_bad_page_stream,
    test_bad_pass_number,
    test_decompression_is_bounded,
    test_destination_still_migrates,
    test_duplicate_complete,
    test_malformed_http_framing,
    test_pages_of_an_unknown_migration,
    test_pass_replayed_after_it_ended,
    test_peer_gone_mid_body,
    test_requests_that_follow_a_discard_log_nothing_more,
    test_second_hello_is_refused_and_the_first_completes,
    test_wrong_memory_is_never_resumed,
)

MAX_BYTES = bad.MAX_MEMORY_PAGES * wire.PAGE_SIZE
MAX_DIGEST_PAGES = MAX_BYTES // 12  # what the same --max-memory holds with the digests


@pytest.fixture(scope="module")
def dest():
    with LoggedDestination("--max-memory", f"{MAX_BYTES // 1024}KiB", "--store", "digests") as d:
        yield d


# With the digests, --max-memory bounds 12 bytes a page: the refused hello is a larger one.
HELLOS = {**bad.HELLOS,
          "more-than-max-memory": (hello_frame(MAX_DIGEST_PAGES + 1), 413, "memory-too-large")}


@pytest.mark.parametrize("name", sorted(HELLOS))
async def test_bad_hello(peer, name, monkeypatch):  # noqa: F811
    monkeypatch.setattr(bad, "HELLOS", HELLOS)
    await bad.test_bad_hello(peer, name)


async def test_max_memory_is_inclusive(peer):  # noqa: F811
    migration_id = await peer.hello(MAX_DIGEST_PAGES)
    async with peer.http.delete(f"{peer.dest.url}/migrations/{migration_id}") as resp:
        assert resp.status == 200


async def test_these_tests_run_on_the_digests(peer):  # noqa: F811
    migration_id = await peer.hello()
    assert peer.dest.status()["store"] == "digests"
    async with peer.http.delete(f"{peer.dest.url}/migrations/{migration_id}") as resp:
        assert resp.status == 200
    assert peer.dest.status()["store"] is None


def _take(store: str, body: bytes) -> tuple[str, list, list, dict | None]:
    """Feed one pass body to a fresh receiver as the server does; what came of it."""
    receiver = Receiver(max_memory_pages=fuzz.MAX_MEMORY_PAGES, store=store)
    incoming = receiver.hello({"page-size": wire.PAGE_SIZE, "memory-pages": fuzz.NPAGES})
    stream = PassStream(receiver, incoming, 1, max_body=MAX_BATCH_BODY)
    try:
        for header, frame in oracle.split_frames(body, MAX_BATCH_BODY):
            stream.frame(header, frame)
        outcome = repr(stream.close())
    except ProtocolError as err:
        outcome = f"{err.code}: {err}"
    verified = None
    if receiver.current is incoming and incoming.passes_ended:
        receiver.begin_complete(incoming)
        verified = receiver.verify(incoming, b"", page_digests(fuzz.MEMORY))
        verified.pop("verify-ms")
    return (outcome, incoming.store.digests().tolist(), incoming.page_pass.tolist(), verified)


@given(body=fuzz.PASS_BODIES)
@fuzz.FUZZ
def test_fuzz_page_stream_is_the_same_with_either_store(body):
    assert _take("digests", body) == _take("image", body)
