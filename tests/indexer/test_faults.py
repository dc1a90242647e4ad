"""Faults: a crash anywhere mid-index, a node that answers garbage or times out, a chain reset.

Restarts must lose and duplicate nothing; a bad node may only slow the indexer down; a reset
chain stops it with a message and leaves the view as it was.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from sqlalchemy import func, select

from crm_ledger import feed
from crm_ledger.chain.client import make_async_web3
from crm_ledger.chain.node import start_anvil
from crm_ledger.db.models import FeedEvent, Record
from crm_ledger.errors import ChainReset, ChainUnavailable
from crm_ledger.indexer import store
from crm_ledger.indexer.source import JsonRpcSource
from crm_ledger.workers import Supervisor
from tests.anchoring.fakes import add_records
from tests.chain.conftest import free_port
from tests.indexer.conftest import AnvilChain
from tests.indexer.helpers import confirmed_records, folded_feed, view_snapshot
from tests.waiting import until
from tests.workers.helpers import supervised

pytestmark = [pytest.mark.chain, pytest.mark.asyncio]


class SimulatedCrash(BaseException):
    """Stands for the process dying: nothing may catch it."""


async def anchored_history(chain: AnvilChain) -> None:
    """40 batches of one record each (40 blocks), and a few token events among them."""
    token = await chain.deploy_token()
    holder = "0x" + "cd" * 20
    for n in range(40):
        add_records(chain.session_factory, customers=1, each=1)
        await chain.anchor(batch_max_records=1)
        if n % 10 == 0:
            await token.issue(b"\x02" * 32, [(n.to_bytes(32, "big"), holder, 3)])


def assert_exactly_once(chain: AnvilChain) -> None:
    """Every record anchored once in the feed, nothing retracted, no event id twice."""
    with chain.session_factory() as session:
        records = session.scalar(select(func.count()).select_from(Record))
        types = session.scalars(select(FeedEvent.type)).all()
        ids = session.scalars(select(FeedEvent.id)).all()
    assert types.count("record.anchored") == records
    assert "record.unanchored" not in types and "reward.retracted" not in types
    assert len(ids) == len(set(ids))
    assert folded_feed(chain.session_factory)["records"] == confirmed_records(chain.session_factory)


@pytest.mark.parametrize("where", ["fetched", "applied", "inside_the_transaction"])
async def test_restart_mid_index_loses_and_duplicates_nothing(
    anvil_chain: AnvilChain, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    await anchored_history(anvil_chain)
    ranges = 0

    def crash_on_fourth(step: str) -> None:
        nonlocal ranges
        if step == where:
            ranges += 1
            if ranges == 4:
                raise SimulatedCrash(step)

    first = anvil_chain.indexer(indexer_chunk_blocks=5)
    if where == "inside_the_transaction":
        real_append = feed.append

        def append_then_die(session: Any, events: Any) -> None:
            real_append(session, events)
            crash_on_fourth(where)

        monkeypatch.setattr(feed, "append", append_then_die)
    else:
        first.checkpoint = crash_on_fourth
    with pytest.raises(SimulatedCrash):
        await anvil_chain.index(first)
    monkeypatch.undo()
    partial = view_snapshot(anvil_chain.session_factory)
    assert partial["batches"], "the crash should come after some ranges were written"

    await anvil_chain.index(anvil_chain.indexer(indexer_chunk_blocks=5))
    assert_exactly_once(anvil_chain)
    resumed = view_snapshot(anvil_chain.session_factory)
    await asyncio.to_thread(store.reset_index, anvil_chain.session_factory)
    await anvil_chain.index(anvil_chain.indexer())
    assert view_snapshot(anvil_chain.session_factory) == resumed


# A misbehaving node ---------------------------------------------------------------------------


class FaultyProxy:
    """A JSON-RPC proxy to Anvil that passes requests through, or misbehaves as told."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.mode: str | Callable[[str, Any], Any] = "pass"
        self.requests = 0
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self._client = aiohttp.ClientSession()

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        body = await request.json()
        calls = body if isinstance(body, list) else [body]
        if self.mode == "timeout":
            await asyncio.sleep(5)
        if self.mode == "http_500":
            return web.Response(status=500, text="upstream exploded")
        if self.mode == "not_json":
            return web.Response(text="<html>502 Bad Gateway</html>", content_type="text/html")
        if self.mode == "rpc_error":
            errors = [
                {"jsonrpc": "2.0", "id": call["id"], "error": {"code": -32000, "message": "busy"}}
                for call in calls
            ]
            return web.json_response(errors if isinstance(body, list) else errors[0])
        if isinstance(body, list) and self.mode == "batch_of_non_objects":
            return web.json_response([42] * len(body))
        if isinstance(body, list) and self.mode == "batch_with_unknown_ids":
            return web.json_response(
                [{"jsonrpc": "2.0", "id": 10_000 + n, "result": None} for n in range(len(body))]
            )
        assert self._client is not None
        async with self._client.post(self.upstream, json=body) as upstream:
            answer = await upstream.json()
        answers = answer if isinstance(answer, list) else [answer]
        methods = {call["id"]: call["method"] for call in calls}
        if callable(self.mode):
            for one in answers:
                if "result" in one:
                    one["result"] = self.mode(methods[one["id"]], one["result"])
        return web.json_response(answer)


@pytest_asyncio.fixture
async def proxy(anvil_chain: AnvilChain) -> AsyncIterator[FaultyProxy]:
    """A `FaultyProxy` in front of the test's Anvil."""
    faulty = FaultyProxy(anvil_chain.node.rpc_url)
    await faulty.start()
    yield faulty
    await faulty.stop()


def corrupt_logs(change: Callable[[list[dict[str, Any]]], None]) -> Callable[[str, Any], Any]:
    """A proxy mode that rewrites eth_getLogs results with `change` (once there are logs)."""

    def mode(method: str, result: Any) -> Any:
        if method == "eth_getLogs" and result:
            result = json.loads(json.dumps(result))
            change(result)
        return result

    return mode


def _set(index: int, key: str, value: Any) -> Callable[[list[dict[str, Any]]], None]:
    def change(logs: list[dict[str, Any]]) -> None:
        logs[index][key] = value

    return change


GARBAGE: dict[str, str | Callable[[str, Any], Any]] = {
    "timeout": "timeout",
    "http_500": "http_500",
    "not_json": "not_json",
    "rpc_error": "rpc_error",
    # JSON-RPC batches (the block-hash checks) answered with things web3 cannot sort or match.
    "batch_of_non_objects": "batch_of_non_objects",
    "batch_with_unknown_ids": "batch_with_unknown_ids",
    "log_of_another_contract": corrupt_logs(_set(0, "address", "0x" + "ee" * 20)),
    "log_outside_the_range": corrupt_logs(_set(0, "blockNumber", "0xffffff")),
    "short_block_hash": corrupt_logs(_set(0, "blockHash", "0x1234")),
    "not_hex": corrupt_logs(_set(0, "data", "0xzz")),
    "truncated_data": corrupt_logs(lambda logs: logs[0].update(data=logs[0]["data"][:-64])),
    "extra_topic": corrupt_logs(lambda logs: logs[0]["topics"].append("0x" + "00" * 32)),
    "removed_log": corrupt_logs(_set(0, "removed", True)),
    "duplicate_log": corrupt_logs(lambda logs: logs.append(logs[0])),
    "two_hashes_for_one_block": corrupt_logs(
        lambda logs: logs.append({**logs[0], "logIndex": "0x63", "blockHash": "0x" + "ab" * 32})
    ),
    "log_of_an_orphaned_block": corrupt_logs(
        lambda logs: [
            log.update(blockHash="0x" + "0f" * 32)
            for log in logs
            if log["blockNumber"] == logs[0]["blockNumber"]
        ]
    ),
    # The same at the range's last block (whose hash the indexer reads before the logs): a
    # node that kept answering so had the indexer retry at once, forever, saying nothing.
    "log_of_an_orphaned_block_at_the_range_end": corrupt_logs(
        lambda logs: [
            log.update(blockHash="0x" + "0f" * 32)
            for log in logs
            if log["blockNumber"] == logs[-1]["blockNumber"]
        ]
    ),
    "result_not_a_list": lambda method, result: (
        {"logs": result} if method == "eth_getLogs" else result
    ),
    "block_without_hash": lambda method, result: (
        {**result, "hash": None} if method == "eth_getBlockByNumber" and result else result
    ),
}


@pytest.mark.parametrize("fault", sorted(GARBAGE))
async def test_a_node_answering_garbage_or_timing_out_never_corrupts_the_view(
    anvil_chain: AnvilChain, proxy: FaultyProxy, fault: str
) -> None:
    add_records(anvil_chain.session_factory, customers=2, each=2)
    await anvil_chain.anchor(batch_max_records=1)
    await anvil_chain.index()
    before = view_snapshot(anvil_chain.session_factory)
    add_records(anvil_chain.session_factory, customers=2, each=2)
    await anvil_chain.anchor(batch_max_records=1)

    w3 = make_async_web3(proxy.url, 0.5)
    supervisor: Supervisor | None = None
    try:
        indexer = anvil_chain.indexer(source=JsonRpcSource(w3))
        proxy.mode = GARBAGE[fault]
        with pytest.raises(ChainUnavailable) as raised:
            for _ in range(5):
                await indexer.step()
        assert proxy.url.split("//")[1] in str(raised.value)
        assert view_snapshot(anvil_chain.session_factory) == before

        # While it misbehaves, the supervisor backs off (0.2, 0.4, 0.8 s) instead of hammering.
        supervisor = Supervisor(
            engine=None, initial_backoff_seconds=0.2, max_backoff_seconds=0.8, idle_seconds=0.05
        )
        supervisor.add(indexer, singleton=False)
        await supervisor.start()
        await asyncio.sleep(0.6)
        rounds_before = proxy.requests
        await asyncio.sleep(1.6)
        assert supervisor.status()["indexer"]["state"] == "backing_off"
        assert proxy.requests - rounds_before <= 30
        assert view_snapshot(anvil_chain.session_factory) == before

        proxy.mode = "pass"
        head = await anvil_chain.head()
        await until(lambda: indexer.stats.indexed_through == head, timeout=20, what="catch-up")
    finally:
        if supervisor is not None:
            await supervisor.stop()
        await w3.provider.disconnect()
    assert indexer.stats.indexed_through == head
    assert_exactly_once(anvil_chain)


async def test_a_reset_chain_stops_the_indexer_and_keeps_the_view(anvil_chain: AnvilChain) -> None:
    add_records(anvil_chain.session_factory, customers=2, each=3)
    await anvil_chain.anchor()
    await anvil_chain.index()
    before = view_snapshot(anvil_chain.session_factory)
    port = anvil_chain.node.port
    await asyncio.to_thread(anvil_chain.node.stop)
    fresh = await asyncio.to_thread(start_anvil, port=port, state_path=None)
    try:
        await anvil_chain.mine(30)
        indexer = anvil_chain.indexer()
        with pytest.raises(ChainReset) as raised:
            await indexer.step()
        assert "AuditLedger epoch 1" in str(raised.value)
        assert "crm-ledger chain recover" in str(raised.value)

        async with supervised(indexer) as supervisor:
            await asyncio.wait_for(supervisor.wait(), timeout=10)
            status = supervisor.status()["indexer"]
        assert status["state"] == "halted"
        assert "not on the chain" in status["message"]
        assert view_snapshot(anvil_chain.session_factory) == before
    finally:
        await asyncio.to_thread(fresh.stop)
