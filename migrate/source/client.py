"""The source's control channel: one aiohttp session talking to a destination.

It carries HELLO, COMPLETE (with the device state and the page digests) and
the cancel. A pass's pages do not go here: they go over the page channels
(`migrate.source.channel`), N upgraded connections per pass that
`migrate.source.datapath` opens with this client's URL, token and timeout.
Refusals come back as `DestinationError` with the destination's error code.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import numpy as np

from migrate import wire

BODY_PIECE = 1 << 20  # a body is written in pieces of at most this, each within the timeout


class DestinationError(Exception):
    """The destination refused a request, or could not be reached."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


class DestinationClient:
    """The control requests to one destination; `close` (or `async with`) ends the session."""

    def __init__(self, base_url: str, *, token: str | None = None, timeout_s: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.token = token  # page channels (migrate.source.channel) send it themselves
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        # sock_read bounds how long a stalled destination can keep us waiting.
        self._timeout = aiohttp.ClientTimeout(total=None, connect=timeout_s, sock_read=timeout_s)
        self._session = aiohttp.ClientSession(headers=headers, timeout=self._timeout)

    async def __aenter__(self) -> DestinationClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._session.close()

    async def _request(self, method: str, path: str, data: Any = None) -> dict[str, Any]:
        url = f"{self.base_url}{path}"
        guard = _WriteGuard(self.timeout_s)
        try:
            async with (
                asyncio.timeout(None) as guard.deadline,
                self._session.request(method, url, data=guard.body(data)) as resp,
            ):
                try:
                    body = await resp.json(content_type=None)
                except ValueError:
                    body = {"error": "bad-response", "detail": (await resp.text())[:200]}
                if resp.status >= 400 or not isinstance(body, dict):
                    detail = body.get("detail", body) if isinstance(body, dict) else body
                    code = body.get("error") if isinstance(body, dict) else None
                    raise DestinationError(
                        f"{method} {path}: {resp.status} {code}: {detail}",
                        status=resp.status,
                        code=code,
                    )
                return body
        except TimeoutError as err:  # ours, or aiohttp's connect and sock_read timeouts
            what = "took no data" if guard.writing else "did not answer"
            raise DestinationError(
                f"{method} {path}: the destination {what} for {self.timeout_s:g} s"
            ) from err
        except aiohttp.ClientError as err:
            raise DestinationError(f"{method} {path}: {type(err).__name__}: {err}") from err

    async def hello(self, info: dict[str, Any]) -> str:
        answer = await self._request(
            "POST", "/migrations", wire.encode_control(wire.MsgType.HELLO, 0, info)
        )
        migration_id = answer.get("id")
        if not isinstance(migration_id, str) or not migration_id.isalnum():
            raise DestinationError(f"HELLO answer has no valid id: {answer!r}")
        return migration_id

    async def complete(
        self, migration_id: str, pass_no: int, device_state: bytes, digests: np.ndarray,
        info: dict[str, Any],
    ) -> dict[str, Any]:
        body = b"".join([
            wire.encode_device_state(pass_no, device_state),
            wire.encode_digests(pass_no, digests),
            wire.encode_control(wire.MsgType.COMPLETE, pass_no, info),
        ])
        return await self._request("POST", f"/migrations/{migration_id}/complete", body)

    async def cancel(self, migration_id: str) -> None:
        await self._request("DELETE", f"/migrations/{migration_id}")


class _WriteGuard:
    """Bound the time the destination takes to accept each piece of a request body.

    aiohttp's sock_read starts only once the whole body is written, so a
    destination that stops reading would hold a streamed POST forever. The
    guard arms the request's deadline while aiohttp writes a piece, and
    disarms it while the source makes the next one (the guest runs, the rate
    limit sleeps: our time, not the peer's).
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.deadline: asyncio.Timeout | None = None
        self.writing = False

    def body(self, data: Any) -> AsyncIterator[bytes | memoryview] | None:
        if data is None:
            return None
        if isinstance(data, bytes | bytearray | memoryview):
            return self._pieces(_one(data))
        return self._pieces(data)

    async def _pieces(self, parts: AsyncIterator[Any]) -> AsyncIterator[memoryview]:
        loop = asyncio.get_running_loop()
        async for part in parts:
            view = memoryview(part).cast("B")
            for start in range(0, len(view), BODY_PIECE):
                self.writing = True
                self.deadline.reschedule(loop.time() + self.timeout_s)
                yield view[start : start + BODY_PIECE]
                self.deadline.reschedule(None)
                self.writing = False


async def _one(data: bytes | bytearray | memoryview) -> AsyncIterator[Any]:
    yield data
