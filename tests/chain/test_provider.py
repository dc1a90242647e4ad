"""The keep-alive provider: one TCP connection for many JSON-RPC calls, and still correct
when the node goes away and comes back."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from web3.types import RPCEndpoint

from crm_ledger.chain.client import make_async_web3
from crm_ledger.chain.provider import KeepAliveHTTPProvider
from tests.chain.conftest import free_port


@dataclass
class FakeNode:
    """A JSON-RPC endpoint answering eth_blockNumber; counts the TCP connections it saw."""

    port: int
    block: int = 7
    connections: set[tuple[str, int]] = field(default_factory=set)
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer is not None:
            self.connections.add((str(peer[0]), int(peer[1])))
        body = await request.json()
        calls = body if isinstance(body, list) else [body]
        answers = [{"jsonrpc": "2.0", "id": c["id"], "result": hex(self.block)} for c in calls]
        payload = answers if isinstance(body, list) else answers[0]
        return web.Response(text=json.dumps(payload), content_type="application/json")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@pytest_asyncio.fixture
async def fake_node() -> AsyncIterator[FakeNode]:
    node = FakeNode(port=free_port())
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


@pytest.mark.asyncio
async def test_many_calls_share_one_connection(fake_node: FakeNode) -> None:
    w3 = make_async_web3(fake_node.url, timeout=5)
    assert isinstance(w3.provider, KeepAliveHTTPProvider)
    try:
        for _ in range(50):
            assert await w3.eth.block_number == 7
        answers = await w3.provider.make_batch_request([(RPCEndpoint("eth_blockNumber"), [])] * 3)
        assert isinstance(answers, list) and len(answers) == 3
    finally:
        await w3.provider.disconnect()
    assert len(fake_node.connections) == 1


@pytest.mark.asyncio
async def test_calls_after_disconnect_open_a_new_session(fake_node: FakeNode) -> None:
    w3 = make_async_web3(fake_node.url, timeout=5)
    try:
        assert await w3.eth.block_number == 7
        await w3.provider.disconnect()
        fake_node.block = 8
        assert await w3.eth.block_number == 8
    finally:
        await w3.provider.disconnect()
    assert len(fake_node.connections) == 2


@pytest.mark.asyncio
async def test_a_node_restarted_under_a_kept_connection_is_reached_again(
    fake_node: FakeNode,
) -> None:
    w3 = make_async_web3(fake_node.url, timeout=5)
    try:
        assert await w3.eth.block_number == 7
        await fake_node.stop()
        with pytest.raises(aiohttp.ClientError):
            await w3.eth.block_number
        await fake_node.start()
        fake_node.block = 9
        assert await w3.eth.block_number == 9
    finally:
        await w3.provider.disconnect()
