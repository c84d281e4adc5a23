"""The data path: the gathering encoder, page channels, lz4 and parallel channels.

In-process tests run the destination application on 127.0.0.1 in the test's
own event loop (so they can look at its receiver); end-to-end tests run the
CLI as a user does (tests/procs.py).
"""

from __future__ import annotations

import asyncio
import itertools
import logging

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from migrate import wire
from migrate.bench.wire import text_pages
from migrate.config import ConfigError, MigrationParams, load_scenario
from migrate.dest.receiver import Receiver
from migrate.dest.server import RECEIVER, make_app
from migrate.digest import page_digests
from migrate.errors import BadControlMessage, PassOutOfOrder, UnexpectedMessage, UnknownMigration
from migrate.source import datapath
from migrate.source.channel import PageChannel
from migrate.source.client import DestinationClient, DestinationError
from migrate.source.clock import VirtualClock
from migrate.source.engine import Source
from migrate.source.link import Link
from tests import wire_oracle as oracle
from tests.procs import SMALL, Destination, load_json, precopy

PAGE = wire.PAGE_SIZE
NPAGES = 512


def make_memory(seed: int = 0, npages: int = NPAGES) -> np.ndarray:
    """Random, zero, mostly-zero and zero-first-word pages, and text."""
    rng = np.random.default_rng(seed)
    mem = rng.integers(0, 256, (npages, PAGE), dtype=np.uint8)
    mem[::3] = 0
    mem[1::5, 64:] = 0
    mem[2::7, :8] = 0  # zero first word, not a zero page
    mem[4::11] = text_pages(rng, len(mem[4::11]))
    return mem


def hello(npages: int = NPAGES) -> dict:
    return {"page-size": PAGE, "memory-pages": npages, "slots": [], "vcpus": 1}


def decode(frame: bytes, npages: int = NPAGES) -> wire.PageBatch:
    ((header, body),) = oracle.split_frames(frame, 1 << 24)
    return wire.decode_pages(header, body, max_gfn=npages)


# -- the gathering encoder --------------------------------------------------------------------


GFN_SETS = {
    "run": np.arange(100, 356),
    "run-of-zeros": np.arange(0, 256, 3),
    "scattered": np.random.default_rng(1).choice(NPAGES, 200, replace=False),
    "reversed": np.arange(300, 44, -1),
    "one": np.array([7]),
    "empty": np.array([], dtype=np.int64),
}


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("name", sorted(GFN_SETS))
def test_encode_gathered_equals_the_plain_oracle(name, compress):
    mem = make_memory()
    gfns = GFN_SETS[name]
    fast = wire.encode_gathered(3, mem, gfns, compress=compress)
    slow = oracle.encode_pages(3, gfns, mem[gfns], compress=compress)
    assert oracle.join(fast.parts) == slow
    assert fast.nbytes == len(slow)
    zero = ~mem[gfns].any(axis=1)
    assert (fast.n_pages, fast.n_zero, fast.n_normal) == (len(gfns), zero.sum(), (~zero).sum())
    ((header, body),) = oracle.split_frames(slow, 1 << 24)
    assert fast.compressed == bool(header.flags & wire.FLAG_LZ4)
    assert fast.payload_wire_bytes == len(body) - wire.pages_layout(len(gfns)).payload


def test_encode_gathered_owns_its_bytes():
    mem = make_memory()
    gfns = np.arange(10, 20)
    frame = wire.encode_gathered(1, mem, gfns)
    before = oracle.join(frame.parts)
    mem[10:20] = 0xAB  # the guest writes right after the read
    assert oracle.join(frame.parts) == before


def test_encode_gathered_validates():
    mem = make_memory()
    with pytest.raises(IndexError):
        wire.encode_gathered(1, mem, np.array([0, NPAGES]))
    with pytest.raises(IndexError):
        wire.encode_gathered(1, mem, np.arange(NPAGES - 2, NPAGES + 2))  # a run off the end
    with pytest.raises(ValueError):
        wire.encode_gathered(1, mem, np.array([0.5]))
    with pytest.raises(ValueError):
        wire.encode_gathered(1, mem[:, ::2], np.array([0]))
    with pytest.raises(ValueError):
        wire.encode_gathered(-1, mem, np.array([0]))


def test_zero_page_mask_reads_whole_pages():
    mem = np.zeros((8, PAGE), dtype=np.uint8)
    mem[1, PAGE - 1] = 1  # zero first word, not zero
    mem[2, 0] = 1
    gfns = np.arange(8)
    expected = [True, False, False, True, True, True, True, True]
    assert wire.zero_page_mask(mem, gfns).tolist() == expected
    assert wire.zero_page_mask(mem, gfns, start=0).tolist() == expected
    assert wire.zero_page_mask(mem, gfns[::-1]).tolist() == expected[::-1]


# -- the receiver: later passes win, a pass ends when all its channels have --------------------


def _receiver(npages: int = 64):
    receiver = Receiver(max_memory_pages=npages)
    return receiver, receiver.hello(hello(npages))


def test_a_late_batch_of_an_earlier_pass_loses():
    receiver, incoming = _receiver()
    old = np.full((2, PAGE), 1, dtype=np.uint8)
    new = np.full((2, PAGE), 2, dtype=np.uint8)
    new[1] = 0  # pass 2 sends gfn 6 as a zero page
    gfns = np.array([5, 6])
    # Pass 2's batch arrives first (its channel was faster), then pass 1's.
    receiver.apply(incoming, decode(oracle.encode_pages(2, gfns, new), 64))
    receiver.apply(incoming, decode(oracle.encode_pages(1, gfns, old), 64))
    assert (incoming.memory[5] == 2).all() and not incoming.memory[6].any()
    assert incoming.page_pass[[5, 6]].tolist() == [2, 2]
    receiver.end_pass(incoming, 1)
    receiver.end_pass(incoming, 2)
    assert incoming.passes_ended == 2


def test_any_arrival_order_leaves_the_latest_pass():
    """Three passes, each split over two channels: every order leaves the same image."""
    rng = np.random.default_rng(3)
    npages = 32
    versions = {p: rng.integers(0, 256, (npages, PAGE), dtype=np.uint8) for p in (1, 2, 3)}
    versions[2][::4] = 0
    sent = {1: np.arange(npages), 2: np.arange(0, npages, 2), 3: np.arange(0, npages, 3)}
    batches = []
    for p, gfns in sent.items():
        for half in (gfns[::2], gfns[1::2]):
            batches.append(decode(oracle.encode_pages(p, half, versions[p][half]), npages))
    expected = np.empty((npages, PAGE), dtype=np.uint8)
    for p in (1, 2, 3):
        expected[sent[p]] = versions[p][sent[p]]
    for order in itertools.islice(itertools.permutations(range(len(batches))), 0, None, 97):
        receiver, incoming = _receiver(npages)
        for i in order:
            receiver.apply(incoming, batches[i])
        assert (incoming.memory == expected).all(), order


def test_on_finish_hears_each_migration_once_whoever_ends_it():
    outcomes: list[bool] = []
    receiver = Receiver(max_memory_pages=64, on_finish=outcomes.append)
    incoming = receiver.hello(hello(64))
    assert receiver.finish(incoming, ok=False, why="a refusal") is True
    assert receiver.finish(incoming, ok=False, why="the watchdog, too late") is False
    receiver.finish(receiver.hello(hello(64)), ok=True, why="resumed")
    assert outcomes == [False, True]


def test_nothing_is_stored_once_the_migration_is_discarded():
    """A late channel of a migration another channel got discarded: refused, not stored."""
    receiver, incoming = _receiver()
    receiver.finish(incoming, ok=False, why="another channel was refused")
    batch = decode(oracle.encode_pages(1, np.array([3]), np.full((1, PAGE), 9, np.uint8)), 64)
    with pytest.raises(UnknownMigration, match="discarded"):
        receiver.apply(incoming, batch)
    assert not incoming.memory.any() and incoming.pages_received == 0
    assert receiver.was_discarded(incoming.id)


def test_a_pass_ends_when_all_its_channels_have():
    receiver, incoming = _receiver()
    receiver.end_pass(incoming, 1, channel=2, channels=3)
    receiver.end_pass(incoming, 1, channel=0, channels=3)
    assert incoming.passes_ended == 0
    receiver.check_pass(incoming, 1)  # a late channel of pass 1 may still start
    with pytest.raises(UnexpectedMessage, match="twice"):
        receiver.end_pass(incoming, 1, channel=0, channels=3)
    with pytest.raises(BadControlMessage, match="3"):
        receiver.end_pass(incoming, 1, channel=1, channels=2)
    receiver.end_pass(incoming, 1, channel=1, channels=3)
    assert incoming.passes_ended == 1
    with pytest.raises(PassOutOfOrder):
        receiver.check_pass(incoming, 1)


def test_a_pass_cannot_end_before_an_earlier_one():
    receiver, incoming = _receiver()
    receiver.end_pass(incoming, 1, channel=0, channels=2)
    with pytest.raises(PassOutOfOrder, match="pass 1"):
        receiver.end_pass(incoming, 2)


def test_zero_pages_are_written_only_over_content():
    receiver, incoming = _receiver()
    content = np.full((1, PAGE), 9, dtype=np.uint8)
    receiver.apply(incoming, decode(oracle.encode_pages(1, np.array([3]), content), 64))
    assert not incoming.zero[3] and incoming.zero[4]
    zeros = np.zeros((2, PAGE), dtype=np.uint8)
    receiver.apply(incoming, decode(oracle.encode_pages(2, np.array([3, 4]), zeros), 64))
    assert not incoming.memory[3].any() and incoming.zero[[3, 4]].all()


# -- page channels, in process ------------------------------------------------------------------


@pytest.fixture
async def dest():
    """The destination application on 127.0.0.1, in this event loop: (app, url)."""
    app = make_app(max_memory_pages=1 << 16, token="s3cret", idle_timeout_s=1.0)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield app, f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def _send_and_verify(url: str, mem: np.ndarray, *, channels: int, compress: bool = False,
                           passes: int = 2) -> list[datapath.PassTraffic]:
    gfns = np.arange(mem.shape[0])
    traffic = []
    async with DestinationClient(url, token="s3cret", timeout_s=10) as client:
        migration_id = await client.hello(hello(mem.shape[0]))
        for pass_no in range(1, passes + 1):
            traffic.append(await datapath.send_pass(
                client, migration_id, pass_no, gfns, memory=mem, link=Link(VirtualClock(), 1e9),
                batch_pages=16, channels=channels, compress=compress,
            ))
            gfns = np.arange(pass_no - 1, mem.shape[0], 5)  # the guest dirties a few pages...
            mem[gfns] += 1  # ...which the next pass sends
        mem[gfns] -= 1  # (no pass after the last)
        answer = await client.complete(migration_id, passes + 1, b"dev", page_digests(mem),
                                       {"pages": mem.shape[0]})
    assert answer["verified"] is True and answer["lost-gfns"] == []
    return traffic


@pytest.mark.parametrize("channels", [1, 2, 4, 16])
async def test_channels_deliver_every_page(dest, channels):
    _, url = dest
    traffic = await _send_and_verify(url, make_memory(), channels=channels)
    assert traffic[0].channels == channels and traffic[0].pages == NPAGES
    assert traffic[1].pages == len(range(0, NPAGES, 5))


async def test_fewer_batches_than_channels(dest):
    _, url = dest
    mem = make_memory(npages=20)
    traffic = await _send_and_verify(url, mem, channels=8)
    assert traffic[0].channels == 2  # 20 pages in batches of 16: two channels are enough


async def test_lz4_over_channels(dest):
    _, url = dest
    mem = make_memory()
    mem[:] = text_pages(np.random.default_rng(5), NPAGES)
    traffic = await _send_and_verify(url, mem, channels=3, compress=True)
    assert traffic[0].compressed_bytes > 0
    assert traffic[0].compressed_raw_bytes > 1.5 * traffic[0].compressed_bytes
    assert traffic[0].bytes < 0.7 * NPAGES * PAGE


async def test_pass_races_over_two_channels(dest):
    """Pass 2's version of a page lands before pass 1's, each on its own channel: pass 2 wins."""
    app, url = dest
    old = np.full((4, PAGE), 1, dtype=np.uint8)
    new = np.full((4, PAGE), 2, dtype=np.uint8)
    async with DestinationClient(url, token="s3cret", timeout_s=10) as client:
        migration_id = await client.hello(hello(4))
        incoming = app[RECEIVER].current

        async def channel(pass_no: int) -> PageChannel:
            return await PageChannel.open(url, f"/migrations/{migration_id}/pass/{pass_no}",
                                          token="s3cret", timeout_s=10)

        late, early = await channel(1), await channel(2)
        await early.send([oracle.encode_pages(2, np.arange(4), new)])
        await early.flush()
        while incoming.page_pass[0] != 2:  # until the destination has stored it
            await asyncio.sleep(0.005)
        await late.send([oracle.encode_pages(1, np.arange(4), old)])
        end = {"pages": 4, "channel": 0, "channels": 1}
        assert (await late.finish(wire.encode_control(wire.MsgType.END_OF_PASS, 1, end)))[
            "pages"] == 4
        assert (await early.finish(wire.encode_control(wire.MsgType.END_OF_PASS, 2, end)))[
            "pages"] == 4
        late.close()
        early.close()
        answer = await client.complete(migration_id, 3, b"", page_digests(new), {"pages": 4})
    assert answer["verified"] is True


async def test_a_refusal_on_a_channel_names_the_error_and_discards(dest):
    app, url = dest
    async with DestinationClient(url, token="s3cret", timeout_s=10) as client:
        migration_id = await client.hello(hello(8))
        channel = await PageChannel.open(url, f"/migrations/{migration_id}/pass/1",
                                         token="s3cret", timeout_s=10)
        bad = oracle.encode_pages(1, np.array([3, 99]), np.ones((2, PAGE), dtype=np.uint8))
        await channel.send([bad])
        with pytest.raises(DestinationError, match="gfn-out-of-range") as err:
            await channel.finish(wire.encode_control(wire.MsgType.END_OF_PASS, 1, {}))
        assert err.value.code == "gfn-out-of-range" and err.value.status == 400
        channel.close()
    assert app[RECEIVER].current is None  # discarded: nothing can resume


async def test_a_bug_is_answered_and_logged_alike_on_both_paths(dest, monkeypatch, caplog):
    """A chunked pass and an upgraded channel go through the one `refusal`: same answer, same
    lines (the traceback, then the discard), on the same logger."""
    app, url = dest

    def bug(self, incoming, batch):
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(Receiver, "apply", bug)
    caplog.set_level(logging.INFO, logger="precopy")
    mem = make_memory(npages=8)
    pages = oracle.join(wire.encode_gathered(1, mem, np.arange(8)).parts)
    end = wire.encode_control(wire.MsgType.END_OF_PASS, 1, {"pages": 8})
    seen = []
    async with (
        DestinationClient(url, token="s3cret", timeout_s=10) as client,
        aiohttp.ClientSession(headers={"Authorization": "Bearer s3cret"}) as http,
    ):
        for via in ("chunked", "upgraded"):
            path = f"/migrations/{await client.hello(hello(8))}/pass/1"
            caplog.clear()
            if via == "chunked":
                async with http.post(url + path, data=pages + end) as resp:
                    answer = (resp.status, (await resp.json())["error"])
            else:
                channel = await PageChannel.open(url, path, token="s3cret", timeout_s=10)
                await channel.send([pages])
                with pytest.raises(DestinationError) as err:
                    await channel.finish(end)
                channel.close()
                answer = (err.value.status, err.value.code)
            lines = [(r.name, r.levelname, r.exc_info is not None) for r in caplog.records]
            seen.append((answer, lines))
            assert app[RECEIVER].current is None
    assert seen[0] == seen[1]
    assert seen[0] == ((500, "internal-error"), [("precopy.dest", "ERROR", True),
                                                 ("precopy.dest", "WARNING", False)])


async def test_end_of_pass_must_count_the_pages(dest):
    app, url = dest
    async with DestinationClient(url, token="s3cret", timeout_s=10) as client:
        migration_id = await client.hello(hello(8))
        channel = await PageChannel.open(url, f"/migrations/{migration_id}/pass/1",
                                         token="s3cret", timeout_s=10)
        await channel.send([oracle.encode_pages(1, np.arange(3), np.ones((3, PAGE), np.uint8))])
        with pytest.raises(DestinationError, match="bad-control-message"):
            await channel.finish(wire.encode_control(wire.MsgType.END_OF_PASS, 1, {"pages": 4}))
        channel.close()
    assert app[RECEIVER].current is None


async def test_a_silent_channel_times_out(dest):
    app, url = dest  # idle timeout 1 s
    async with DestinationClient(url, token="s3cret", timeout_s=10) as client:
        migration_id = await client.hello(hello(8))
        channel = await PageChannel.open(url, f"/migrations/{migration_id}/pass/1",
                                         token="s3cret", timeout_s=10)
        with pytest.raises(DestinationError, match="source-timeout"):
            await channel.answer()
        channel.close()
    assert app[RECEIVER].current is None


async def test_a_channel_needs_the_token(dest):
    _, url = dest
    async with DestinationClient(url, token="s3cret", timeout_s=10) as client:
        migration_id = await client.hello(hello(8))
        with pytest.raises(DestinationError, match="401 unauthorized") as err:
            await PageChannel.open(url, f"/migrations/{migration_id}/pass/1", token="wrong",
                                   timeout_s=10)
        assert err.value.status == 401


async def test_a_channel_to_an_unknown_migration_is_refused(dest):
    _, url = dest
    with pytest.raises(DestinationError, match="404 unknown-migration"):
        await PageChannel.open(url, "/migrations/feedbeef/pass/1", token="s3cret", timeout_s=10)


async def test_the_chunked_body_path_takes_channel_fields(dest):
    _, url = dest
    mem = make_memory(npages=8)
    async with (
        DestinationClient(url, token="s3cret", timeout_s=10) as client,
        aiohttp.ClientSession(headers={"Authorization": "Bearer s3cret"}) as http,
    ):
        migration_id = await client.hello(hello(8))

        async def frames(pass_no: int, gfns: np.ndarray, info: dict):
            yield oracle.join(wire.encode_gathered(pass_no, mem, gfns).parts)
            yield wire.encode_control(wire.MsgType.END_OF_PASS, pass_no, info)

        halves = np.arange(4), np.arange(4, 8)
        for i, half in enumerate(halves):
            body = frames(1, half, {"pages": 4, "channel": i, "channels": 2})
            async with http.post(f"{url}/migrations/{migration_id}/pass/1", data=body) as resp:
                assert resp.status == 200
                answer = await resp.json()
            assert answer == {"pass": 1, "pages": 4, "bytes": answer["bytes"]}
        answer = await client.complete(migration_id, 2, b"", page_digests(mem), {"pages": 8})
        assert answer["verified"] is True


# -- lz4 in the engine: text-like memory costs fewer bytes and less time ------------------------


def text(npages: int) -> np.ndarray:
    """Text-like pages: 256 pages of words, repeated, each stamped with its index."""
    pool = text_pages(np.random.default_rng(9), 256)
    pages = pool[np.arange(npages) % len(pool)]
    pages[:, :8] = np.arange(npages, dtype=np.uint64)[:, None].view(np.uint8)
    return pages


async def _run_source(url: str, overrides: list[str], fill) -> dict:
    scenario = load_scenario(SMALL, ["guest.workload.prefill=false", *overrides])
    async with DestinationClient(url, token="s3cret", timeout_s=10) as client:
        source = Source(scenario, client)
        ws = scenario.guest.workload.working_set_pages
        source.vm.pages[:ws] = fill(ws)  # the program's memory: text, as prefill would
        report = await source.run()
    assert report.ok, report.error
    return report.to_dict()


async def test_lz4_shrinks_text_like_memory(dest):
    _, url = dest
    plain = await _run_source(url, [], text)
    lz4 = await _run_source(url, ["migration.compression=lz4"], text)
    assert plain["ram"]["compressed-bytes"] == 0 and plain["ram"]["compression-ratio"] == 1.0
    assert lz4["ram"]["compressed-bytes"] > 0
    assert lz4["ram"]["compression-ratio"] > 1.8
    assert lz4["ram"]["transferred"] < 0.6 * plain["ram"]["transferred"]
    assert lz4["total-time"] < plain["total-time"]  # the link is the bottleneck at 64 MiB/s


async def test_lz4_cpu_cost_shows_when_the_link_is_fast(dest):
    """At 10 Gbit/s, compressing (~5 us/page) is slower than sending: channels share it."""
    _, url = dest
    fast = ["migration.max-bandwidth=10Gbit/s", "guest.workload.rate=100"]
    plain = await _run_source(url, fast, text)
    one = await _run_source(url, [*fast, "migration.compression=lz4"], text)
    four = await _run_source(url, [*fast, "migration.compression=lz4", "migration.channels=4"],
                             text)
    assert one["rounds"][0]["duration"] > plain["rounds"][0]["duration"]
    assert four["rounds"][0]["duration"] < one["rounds"][0]["duration"]


# -- configuration ----------------------------------------------------------------------------


def test_config_keys_round_trip():
    scenario = load_scenario(None, ["migration.compression=lz4", "migration.channels=8"])
    assert scenario.migration.compression == "lz4" and scenario.migration.channels == 8
    data = scenario.migration.to_dict()
    assert data["compression"] == "lz4" and data["channels"] == 8
    assert MigrationParams.from_dict(data) == scenario.migration
    default = MigrationParams()
    assert (default.compression, default.channels) == ("none", 1)


@pytest.mark.parametrize("override,message", [
    ("migration.compression=zstd", "migration.compression: 'zstd' is not one of none, lz4"),
    ("migration.compression=true", "migration.compression: True is not one of none, lz4"),
    ("migration.channels=0", "migration.channels: 0 is not in 1..16"),
    ("migration.channels=17", "migration.channels: 17 is not in 1..16"),
    ("migration.channels=2.5", "migration.channels: 2.5 is not an integer"),
    ("migration.chanels=2", "did you mean 'migration.channels'"),
])
def test_config_rejects_bad_values(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_scenario(None, [override])


# -- end to end: the CLI, two processes ---------------------------------------------------------


def _run(tmp_path, name: str, *sets: str) -> dict:
    out = tmp_path / f"{name}.json"
    args = [arg for s in sets for arg in ("--set", s)]
    proc = precopy("run", str(SMALL), "--quiet", "--json", str(out), *args)
    assert proc.returncode == 0, proc.stderr
    report = load_json(out)
    assert report["status"] == "completed" and report["verified"] is True
    return report


def test_e2e_lz4_verifies_and_saves_bytes(tmp_path):
    # Without prefill the guest writes stamp zero pages: 16 bytes of content, 4080 of zeros.
    plain = _run(tmp_path, "plain", "guest.workload.prefill=false")
    lz4 = _run(tmp_path, "lz4", "guest.workload.prefill=false", "migration.compression=lz4")
    assert lz4["ram"]["compressed-bytes"] > 0 and lz4["ram"]["compression-ratio"] > 10
    assert lz4["ram"]["transferred"] < plain["ram"]["transferred"]
    assert lz4["config"]["migration"]["compression"] == "lz4"


@pytest.mark.parametrize("channels", [2, 4])
def test_e2e_channels_verify_and_share_the_link(tmp_path, channels):
    one = _run(tmp_path, "one", "migration.channels=1")
    many = _run(tmp_path, f"ch{channels}", f"migration.channels={channels}")
    # The channels share the link: the same model time, pass for pass.
    assert many["total-time"] == one["total-time"] and many["downtime"] == one["downtime"]
    assert [r["pages-sent"] for r in many["rounds"]] == [r["pages-sent"] for r in one["rounds"]]


def test_e2e_channels_with_a_token_and_lz4(tmp_path):
    out = tmp_path / "token.json"
    with Destination("--once", "--token", "t0ken") as dest:
        proc = precopy("source", str(SMALL), "--dest", dest.url, "--token", "t0ken",
                       "--json", str(out), "--quiet", "--set", "migration.channels=3",
                       "--set", "migration.compression=lz4")
        assert proc.returncode == 0, proc.stderr
        assert dest.wait() == 0
    assert load_json(out)["verified"] is True


async def test_wall_clock_channels_share_the_rate_limit():
    """Four channels sending at once are held to the link's rate together, not each."""
    from migrate.source.clock import RATE_LIMIT_WINDOW_NS, WallClock

    clock = WallClock()
    link = Link(clock, 20e6)  # 20 MB/s: a 2 MB window

    async def channel() -> None:
        for _ in range(10):
            await link.transfer(200_000)

    started = clock.now_ns
    await asyncio.gather(*(channel() for _ in range(4)))  # 8 MB: 0.4 s at 20 MB/s
    elapsed_s = (clock.now_ns - started) / 1e9
    assert elapsed_s >= 0.4 - RATE_LIMIT_WINDOW_NS / 1e9 - 0.01


def test_e2e_wall_clock_channels_keep_to_max_bandwidth(tmp_path):
    report = _run(tmp_path, "wall", "clock=wall", "migration.channels=3")
    limit = 64 * 2**20  # small.toml's max-bandwidth
    first = report["rounds"][0]
    # One 100 ms window's budget may go ahead of the rate; three channels must not triple it.
    assert first["bandwidth"] < limit * (1 + 0.1 * limit / first["bytes"]) * 1.1


def test_verification_names_lost_pages_but_bounded():
    from migrate.dest.receiver import LOST_GFNS_LISTED

    npages = LOST_GFNS_LISTED + 500
    receiver, incoming = _receiver(npages)
    source = page_digests(np.ones((npages, PAGE), dtype=np.uint8))  # nothing was received
    receiver.begin_complete(incoming)
    result = receiver.verify(incoming, b"dev", source)
    assert result["verified"] is False and result["lost-count"] == npages
    assert result["lost-gfns"] == list(range(LOST_GFNS_LISTED))
