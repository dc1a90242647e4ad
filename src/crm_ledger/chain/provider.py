"""`KeepAliveHTTPProvider`: web3's async HTTP provider without a new TCP connection per call.

Exports: `KeepAliveHTTPProvider`.

web3's `AsyncHTTPProvider` makes its aiohttp session with `TCPConnector(force_close=True)`, so
every JSON-RPC call (the anchorer's polling, the indexer's rounds, the loyalty worker's) pays a
TCP connect and leaves a socket in TIME_WAIT: thousands a minute on a busy service, and event
loop time the API needs. This provider hands web3 a session that keeps connections alive (the
provider's own hook, `cache_async_session`), one per event loop. A connection the node closed
is noticed by aiohttp and the call fails like any other transport error (`ChainUnavailable`
upstream), so the callers' retry schedules are unchanged.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import ClientSession, TCPConnector
from web3 import AsyncHTTPProvider
from web3.types import RPCEndpoint, RPCResponse

__all__ = ["KeepAliveHTTPProvider"]

#: Connections open at once per event loop: aiohttp's default, the limit web3's own connector
#: had. The service's workers make a handful of calls at a time; a caller cancelled mid-call can
#: hold one until its response is collected, and must not starve the others.
POOL_SIZE = 100


class KeepAliveHTTPProvider(AsyncHTTPProvider):
    """`AsyncHTTPProvider` whose session keeps TCP connections alive between calls."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sessions: dict[int, tuple[asyncio.AbstractEventLoop, ClientSession]] = {}

    async def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        await self._keep_alive_session()
        return await super().make_request(method, params)

    async def make_batch_request(
        self, batch_requests: list[tuple[RPCEndpoint, Any]]
    ) -> list[RPCResponse] | RPCResponse:
        await self._keep_alive_session()
        return await super().make_batch_request(batch_requests)

    async def _keep_alive_session(self) -> None:
        loop = asyncio.get_running_loop()
        kept = self._sessions.get(id(loop))
        if kept is not None and kept[0] is loop and not kept[1].closed:
            return
        # A session closed by `disconnect()`, or made on a loop since closed, is replaced.
        self._sessions = {
            key: (its_loop, session)
            for key, (its_loop, session) in self._sessions.items()
            if not session.closed and not its_loop.is_closed()
        }
        session = ClientSession(raise_for_status=True, connector=TCPConnector(limit=POOL_SIZE))
        cached = await self.cache_async_session(session)
        if cached is not session:
            # web3 already held a session for this loop and kept it: ours is not needed.
            await session.close()
        self._sessions[id(loop)] = (loop, cached)
