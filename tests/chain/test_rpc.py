"""RpcNode against a fake provider: what a failure or a bad answer becomes, and what it quotes."""

from __future__ import annotations

import json
import traceback
from typing import Any

import pytest
from web3.providers.async_base import AsyncBaseProvider
from web3.types import RPCEndpoint, RPCResponse

from crm_ledger.chain.rpc import REASON_MAX_CHARS, RpcNode
from crm_ledger.errors import ChainUnavailable

SECRET_URL = "https://user:hunter2@rpc.example:8545/v3/secret-key"


class CannedProvider(AsyncBaseProvider):
    """Answers every request with `answer`, or raises it."""

    endpoint_uri = SECRET_URL

    def __init__(self, answer: Any) -> None:
        super().__init__()
        self.answer = answer

    async def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer  # type: ignore[no-any-return]


async def failure(answer: Any) -> str:
    """The message of the `ChainUnavailable` that `eth_blockNumber` answered by `answer` raises;
    nothing printed of it (chained exceptions included) holds the secret URL."""
    with pytest.raises(ChainUnavailable) as raised:
        await RpcNode(CannedProvider(answer)).request("eth_blockNumber", [])
    assert "hunter2" not in "".join(traceback.format_exception(raised.value))
    return str(raised.value)


@pytest.mark.asyncio
async def test_request_returns_the_result() -> None:
    node = RpcNode(CannedProvider({"jsonrpc": "2.0", "id": 0, "result": "0x2a"}))
    assert await node.request("eth_blockNumber", []) == "0x2a"
    assert node.url == "https://rpc.example:8545/…"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (
            TimeoutError(f"no answer from {SECRET_URL}"),
            "cannot reach the chain at https://rpc.example:8545/… (eth_blockNumber): no answer "
            "from https://rpc.example:8545/…",
        ),
        (
            json.JSONDecodeError("Could not decode '<html>'", "<html>", 0),
            "cannot reach the chain at https://rpc.example:8545/… (eth_blockNumber): Could not",
        ),
        (
            {"jsonrpc": "2.0", "id": 0, "error": {"code": -32000, "message": "busy"}},
            "answered eth_blockNumber with an error: busy",
        ),
        (["0x2a"], "with garbage: the answer is not a JSON-RPC response"),
        ({"jsonrpc": "2.0", "id": 0}, "with garbage: the response has no result"),
    ],
    ids=["timeout", "not_json", "error_object", "not_an_object", "no_result"],
)
async def test_failures_become_chain_unavailable(answer: Any, expected: str) -> None:
    assert expected in await failure(answer)


@pytest.mark.asyncio
async def test_a_long_reason_is_cut_after_the_url_is_redacted() -> None:
    # The URL straddles the cut: cut first, its start would no longer match and would leak.
    text = "x" * (REASON_MAX_CHARS - 10) + SECRET_URL
    message = await failure({"jsonrpc": "2.0", "id": 0, "error": {"message": text}})
    assert "hunter2" not in message and "https://user" not in message
    assert message.endswith("x" * (REASON_MAX_CHARS - 10) + "https://rp")
