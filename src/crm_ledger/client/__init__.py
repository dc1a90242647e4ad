"""crm-ledger's Python client: record, page, fetch receipts and verify them in a few lines.

Exports: `Client`, `AsyncClient`, `Receipt`, the models it answers with (`CustomerPublic`,
`RecordPublic`, `FeedEventPublic`, `SourcePublic`, `WebhookSubscriptionCreated`, ...: the API's
own, one definition) and the exceptions of `crm_ledger.client.errors`.

Example::

    from crm_ledger.client import Client

    with Client("http://127.0.0.1:8000", api_key=KEY) as client:
        ada = client.customers.create(name="Ada Lovelace", email="ada@example.com")
        record = client.interactions.create(customer_id=ada.id, type="support_call",
                                            channel="phone", occurred_at="2026-11-25T10:00:00Z")
        receipt = client.records.receipt(record.id, wait=True)
        print(receipt.verify(rpc_url="http://127.0.0.1:8545").verdict)   # "valid"

Importing it loads neither FastAPI, SQLAlchemy nor web3 (a test checks): only httpx, pydantic,
tenacity, eth_abi and the pure ledger format.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import httpx

from crm_ledger.client import async_integrations, async_resources, integrations, resources
from crm_ledger.client.calls import (
    AwardJobPublic,
    CampaignPublic,
    ClawbackPublic,
    CustomerPublic,
    DeliveryPublic,
    ErasurePublic,
    LoyaltyAccountPublic,
    RecordPublic,
    RedemptionPublic,
    SourcePublic,
    WebhookDeliveryPublic,
    WebhookSecretPublic,
    WebhookSubscriptionCreated,
    WebhookSubscriptionPublic,
)
from crm_ledger.client.errors import (
    ApiError,
    BadRequest,
    ClientError,
    Conflict,
    ConnectionFailed,
    FieldError,
    Forbidden,
    Gone,
    IdempotencyConflict,
    NotAnchoredYet,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    Unauthorized,
    ValidationFailed,
)
from crm_ledger.client.receipts import Receipt
from crm_ledger.client.transport import Call, Settings, asend, send
from crm_ledger.crm.schemas import FeedEventPublic

__all__ = [
    "ApiError",
    "AsyncClient",
    "AwardJobPublic",
    "BadRequest",
    "CampaignPublic",
    "ClawbackPublic",
    "Client",
    "ClientError",
    "Conflict",
    "ConnectionFailed",
    "CustomerPublic",
    "DeliveryPublic",
    "ErasurePublic",
    "FeedEventPublic",
    "FieldError",
    "Forbidden",
    "Gone",
    "IdempotencyConflict",
    "LoyaltyAccountPublic",
    "NotAnchoredYet",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "Receipt",
    "RecordPublic",
    "RedemptionPublic",
    "ServerError",
    "ServiceUnavailable",
    "SourcePublic",
    "Unauthorized",
    "ValidationFailed",
    "WebhookDeliveryPublic",
    "WebhookSecretPublic",
    "WebhookSubscriptionCreated",
    "WebhookSubscriptionPublic",
]


class Client:
    """The service over HTTP, synchronously.

    `base_url` defaults to `CRM_LEDGER_URL` (else http://127.0.0.1:8000) and `api_key` to
    `CRM_LEDGER_API_KEY`. `timeout` is per request in seconds; a call is retried up to
    `max_retries` times (connection errors, timeouts, 429, 503), waiting what Retry-After says
    or `backoff` * 2**n seconds with jitter, at most `max_backoff`. `transport` is for tests.
    Use it as a context manager, or call `close()`.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 10.0,
        max_retries: int = 5,
        backoff: float = 0.25,
        max_backoff: float = 8.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.settings = Settings.from_env(
            base_url,
            api_key,
            timeout=timeout,
            max_retries=max_retries,
            backoff=backoff,
            max_backoff=max_backoff,
        )
        self._http = httpx.Client(
            base_url=self.settings.base_url,
            headers=self.settings.headers(),
            timeout=timeout,
            transport=transport,
        )
        self.customers = resources.Customers(self._send)
        self.interactions = resources.Interactions(self._send)
        self.orders = resources.Orders(self._send)
        self.records = resources.Records(self._send)
        self.audit = resources.Audit(self._send)
        self.campaigns = resources.Campaigns(self._send)
        self.redemptions = resources.Redemptions(self._send)
        self.loyalty = resources.Loyalty(self._send)
        self.events = resources.Events(self._send)
        self.sources = integrations.Sources(self._send)
        self.webhook_subscriptions = integrations.WebhookSubscriptions(self._send)

    def _send(self, call: Call) -> httpx.Response:
        return send(self._http, self.settings, call)

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str | int] | None = None,
        idempotency_key: str | None = None,
    ) -> httpx.Response:
        """Any endpoint, with the same key, retries and errors as the resources."""
        return self._send(Call(method.upper(), path, json, params or {}, idempotency_key))

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClient:
    """The service over HTTP for asyncio code; configured as `Client`, with the same
    resources, each method awaited (list calls are async iterators)."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 10.0,
        max_retries: int = 5,
        backoff: float = 0.25,
        max_backoff: float = 8.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = Settings.from_env(
            base_url,
            api_key,
            timeout=timeout,
            max_retries=max_retries,
            backoff=backoff,
            max_backoff=max_backoff,
        )
        self._http = httpx.AsyncClient(
            base_url=self.settings.base_url,
            headers=self.settings.headers(),
            timeout=timeout,
            transport=transport,
        )
        self.customers = async_resources.AsyncCustomers(self._send)
        self.interactions = async_resources.AsyncInteractions(self._send)
        self.orders = async_resources.AsyncOrders(self._send)
        self.records = async_resources.AsyncRecords(self._send)
        self.audit = async_resources.AsyncAudit(self._send)
        self.campaigns = async_resources.AsyncCampaigns(self._send)
        self.redemptions = async_resources.AsyncRedemptions(self._send)
        self.loyalty = async_resources.AsyncLoyalty(self._send)
        self.events = async_resources.AsyncEvents(self._send)
        self.sources = async_integrations.AsyncSources(self._send)
        self.webhook_subscriptions = async_integrations.AsyncWebhookSubscriptions(self._send)

    async def _send(self, call: Call) -> httpx.Response:
        return await asend(self._http, self.settings, call)

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str | int] | None = None,
        idempotency_key: str | None = None,
    ) -> httpx.Response:
        """Any endpoint, with the same key, retries and errors as the resources."""
        return await self._send(Call(method.upper(), path, json, params or {}, idempotency_key))

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
