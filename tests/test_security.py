"""Security of the destination: where it listens, the shared token, the bounds on what it reads.

Nothing here listens beyond loopback: the non-loopback cases use a TEST-NET
address (192.0.2.1, RFC 5737) that no interface has, so they show that the
token check passed (the bind then fails) without opening a port.
"""

from __future__ import annotations

import hmac
import os
import subprocess
import sys

import aiohttp
import pytest
from aiohttp import web

from migrate import cli
from migrate.dest import server as dest
from tests.peers import LoggedDestination, complete_body, guest_image, hello_frame, pass_body
from tests.procs import ROOT, SMALL, load_json, precopy

TOKEN = "s3cret-token-for-the-tests"
NO_TOKEN_ENV = {k: v for k, v in os.environ.items() if k != "PRECOPY_TOKEN"}


def _dest(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`precopy dest ARGS` that is expected to stop at once (bounded anyway)."""
    return subprocess.run([sys.executable, "-m", "migrate", "dest", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=30, env=env or NO_TOKEN_ENV)


# ---------------------------------------------------------------- where it listens


def test_listens_on_loopback_unless_told_otherwise():
    assert cli.DEFAULT_LISTEN.startswith("127.0.0.1:")
    assert cli.build_parser().parse_args(["dest"]).listen == cli.DEFAULT_LISTEN
    assert cli._parse_listen(":0") == ("127.0.0.1", 0)  # a port alone: still loopback
    proc = subprocess.Popen([sys.executable, "-m", "migrate", "dest", "--listen", ":0"],
                            cwd=ROOT, text=True, stdout=subprocess.PIPE, env=NO_TOKEN_ENV)
    try:
        assert proc.stdout.readline().startswith("precopy dest: listening on http://127.0.0.1:")
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


@pytest.mark.parametrize("host,loopback", [
    ("127.0.0.1", True), ("127.3.2.1", True), ("::1", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("192.0.2.1", False), ("10.1.2.3", False),
    ("fe80::1", False), ("dest.example.com", False), ("", False),
])
def test_what_counts_as_loopback(host, loopback):
    assert cli._is_loopback(host) is loopback


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "[::]:0", "192.0.2.1:0", "dest.example:0"])
def test_beyond_loopback_needs_a_token(listen):
    proc = _dest("--listen", listen)
    assert proc.returncode == 2
    assert "a token (--token or PRECOPY_TOKEN) is required" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""  # it never listened


@pytest.mark.parametrize("how", ["option", "environment"])
def test_a_token_lets_it_listen_beyond_loopback(how):
    args, env = ["--listen", "192.0.2.1:0"], dict(NO_TOKEN_ENV)
    if how == "option":
        args += ["--token", TOKEN]
    else:
        env["PRECOPY_TOKEN"] = TOKEN
    proc = _dest(*args, env=env)
    # Past the token check, it tried to bind an address this host does not have.
    assert proc.returncode == 2 and "--listen 192.0.2.1:0:" in proc.stderr
    assert "token" not in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- the token


@pytest.fixture(scope="module")
def guarded():
    with LoggedDestination("--token", TOKEN) as d:
        yield d


def _headers(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


REQUESTS = [
    ("GET", "/status", b""),
    ("POST", "/migrations", hello_frame(256)),
    ("POST", "/migrations/0123456789ab/pass/1", pass_body(1, guest_image(256))),
    ("POST", "/migrations/0123456789ab/complete", complete_body(1, guest_image(256))),
    ("DELETE", "/migrations/0123456789ab", b""),
    ("GET", "/no/such/route", b""),
]


@pytest.mark.parametrize("token", [None, "", "wrong", TOKEN[:-1], TOKEN + "x", TOKEN.upper(),
                                   f"Basic {TOKEN}"])
@pytest.mark.parametrize("method,path,body", REQUESTS, ids=[f"{m} {p}" for m, p, _ in REQUESTS])
async def test_every_request_needs_the_token(guarded, method, path, body, token):
    before = len(guarded.lines)
    async with aiohttp.ClientSession() as http:
        async with http.request(method, guarded.url + path, data=body,
                                headers=_headers(token)) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"] == "Bearer"
            assert (await resp.json())["error"] == "unauthorized"
    lines = guarded.wait_log(before + 1)[before:]
    assert len(lines) == 1 and f"{method} {path}: unauthorized" in lines[0]
    assert guarded.status(TOKEN)["busy"] is False  # nothing was started


async def test_a_refused_request_does_not_touch_the_migration(guarded):
    async with aiohttp.ClientSession(headers=_headers(TOKEN)) as http:
        async with http.post(guarded.url + "/migrations", data=hello_frame(256)) as resp:
            assert resp.status == 201
            migration_id = (await resp.json())["id"]
        async with http.delete(f"{guarded.url}/migrations/{migration_id}",
                               headers=_headers("wrong")) as resp:
            assert resp.status == 401
        assert guarded.status(TOKEN)["migration"] == migration_id
        async with http.delete(f"{guarded.url}/migrations/{migration_id}") as resp:
            assert resp.status == 200


@pytest.mark.parametrize("how", ["option", "environment"])
def test_migration_with_the_token(guarded, tmp_path, how):
    out = tmp_path / "r.json"
    args = ["source", str(SMALL), "--dest", guarded.url, "--quiet", "--json", str(out)]
    env = dict(NO_TOKEN_ENV)
    if how == "option":
        args += ["--token", TOKEN]
    else:
        env["PRECOPY_TOKEN"] = TOKEN
    proc = precopy(*args, env=env)
    assert proc.returncode == 0, proc.stderr
    assert load_json(out)["verified"] is True


@pytest.mark.parametrize("token", [None, "wrong"])
def test_migration_without_the_token_fails_cleanly(guarded, tmp_path, token):
    out = tmp_path / "r.json"
    args = ["source", str(SMALL), "--dest", guarded.url, "--quiet", "--json", str(out)]
    proc = precopy(*args, *(["--token", token] if token else []), env=NO_TOKEN_ENV)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    report = load_json(out)
    assert report["status"] == "failed" and "401 unauthorized" in report["error"]
    assert report["guest"]["running"] is True


async def test_the_token_is_compared_in_constant_time(monkeypatch):
    """Every request's token goes through hmac.compare_digest, never `==`."""
    calls = []
    original = hmac.compare_digest

    def compare_digest(a, b):
        calls.append((a, b))
        return original(a, b)

    monkeypatch.setattr(dest.hmac, "compare_digest", compare_digest)
    runner = web.AppRunner(dest.make_app(max_memory_pages=1024, token=TOKEN), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        async with aiohttp.ClientSession() as http:
            for token in (None, "x", TOKEN[:5], TOKEN):
                async with http.get(f"http://{host}:{port}/status",
                                    headers=_headers(token)) as resp:
                    assert resp.status == (200 if token == TOKEN else 401)
    finally:
        await runner.cleanup()
    assert len(calls) == 4
    assert all(b == TOKEN.encode() for _, b in calls)
