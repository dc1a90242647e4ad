"""One JSON-RPC node as every chain client reaches it: its name in messages, raw requests, and
what its failures become.

Exports: `RpcNode`, `redact_url`, `answered_garbage`, `REASON_MAX_CHARS`.

`ContractClient` (so `LedgerChain` and `LoyaltyToken`) and the indexer's `JsonRpcSource` reach
their node through an `RpcNode`. A transport failure (connection refused, timeout, an HTTP error
status, a body that is not JSON or not UTF-8), an error object the node answers with and a
response that is not JSON-RPC all become `ChainUnavailable`. Its message names the node by its
URL without credentials, path or query, quotes at most `REASON_MAX_CHARS` characters of the
cause (a proxy's error page can be long), and it is raised without the underlying exception
chained, since that can carry the full URL.

Example::

    w3 = make_async_web3("https://rpc.example/v3/<api key>", timeout=10)
    node = RpcNode(w3.provider)  # named "https://rpc.example/…" in messages
    head = int(await node.request("eth_blockNumber", []), 16)
    with node.transport("eth_chainId"):  # around a call through web3's own methods
        chain_id = await w3.eth.chain_id
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from web3.exceptions import BadResponseFormat, ProviderConnectionError, Web3RPCError
from web3.providers.async_base import AsyncBaseProvider
from web3.types import RPCEndpoint

from crm_ledger.errors import ChainUnavailable

__all__ = ["REASON_MAX_CHARS", "RpcNode", "answered_garbage", "redact_url"]

#: The most of a failure's own text (an exception message, a node's error) a message quotes.
REASON_MAX_CHARS = 300

_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientError,
    OSError,  # connection refused/reset; TimeoutError is an OSError
    ProviderConnectionError,
    BadResponseFormat,
    json.JSONDecodeError,
    UnicodeDecodeError,
)


def redact_url(url: str) -> str:
    """`url` without credentials, path or query, which may hold an API key."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        return "<unparsable RPC URL>"
    if ":" in host:
        host = f"[{host}]"
    hidden = "/…" if parts.path.strip("/") or parts.query else ""
    return f"{parts.scheme}://{host}{port}{hidden}"


def answered_garbage(url: str, doing: str, what: str) -> ChainUnavailable:
    """The node at `url` (already redacted) answered `doing` with garbage; `what` says how."""
    return ChainUnavailable(f"the node at {url} answered {doing} with garbage: {what}")


class RpcNode:
    """The node behind a provider; the caller opens and closes the provider."""

    def __init__(self, provider: AsyncBaseProvider) -> None:
        self._provider = provider
        endpoint = getattr(provider, "endpoint_uri", None)
        self._endpoint = str(endpoint) if endpoint else None
        #: The node's URL without credentials, path or query (the provider's class without one).
        self.url = redact_url(self._endpoint) if self._endpoint else type(provider).__name__

    @contextlib.contextmanager
    def transport(self, doing: str) -> Iterator[None]:
        """Turn transport failures and node errors raised inside into `ChainUnavailable`."""
        try:
            yield
        except Web3RPCError as exc:
            raise self.node_error(doing, exc.message) from None
        except _TRANSPORT_ERRORS as exc:
            reason = self._scrub(str(exc)) or type(exc).__name__
            raise ChainUnavailable(
                f"cannot reach the chain at {self.url} ({doing}): {reason}"
            ) from None

    async def request(self, method: str, params: list[Any]) -> Any:
        """The result of one request, as the node's JSON, without web3's result formatters."""
        with self.transport(method):
            response = await self._provider.make_request(RPCEndpoint(method), params)
        return self.result(response, method)

    def result(self, response: Any, doing: str) -> Any:
        """The result of one JSON-RPC response to `doing`; `ChainUnavailable` for an error
        object or anything that is not a JSON-RPC response."""
        if not isinstance(response, dict):
            raise self.garbage(doing, "the answer is not a JSON-RPC response")
        error = response.get("error")
        if error is not None:
            message = error.get("message") if isinstance(error, dict) else error
            raise self.node_error(doing, str(message))
        if "result" not in response:
            raise self.garbage(doing, "the response has no result")
        return response["result"]

    def node_error(self, doing: str, error: str) -> ChainUnavailable:
        """The node answered `doing` with the error `error`."""
        return ChainUnavailable(
            f"the node at {self.url} answered {doing} with an error: {self._scrub(error)}"
        )

    def garbage(self, doing: str, what: str) -> ChainUnavailable:
        """`answered_garbage` for this node."""
        return answered_garbage(self.url, doing, what)

    def _scrub(self, text: str) -> str:
        """`text` with the full endpoint URL, which may hold an API key, redacted; then cut to
        `REASON_MAX_CHARS` (after redacting, so no part of the URL is left)."""
        if self._endpoint:
            text = text.replace(self._endpoint, self.url)
        return text[:REASON_MAX_CHARS]
