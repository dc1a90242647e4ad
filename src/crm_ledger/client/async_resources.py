"""Resources as a user thinks of them: `client.customers`, `client.records`, `client.audit`, ...

Exports: `Resource`, `Customers`, `Interactions`, `Orders`, `Records`, `Audit`, `Campaigns`,
`Redemptions`, `Loyalty`, `Events`: named `Async...` in `async_resources` (for `AsyncClient`)
and without the prefix in `resources` (for `Client`). The shops and webhook subscriptions are
in `async_integrations` / `integrations`.

Only the async module is written by hand: `scripts/unasync_client.py` generates the sync one
from it (unasync), and a test checks the two agree. Each method builds its request in `calls`
and sends it through the client's `send`, which retries and maps problems to exceptions. List
calls iterate, following the cursor.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel

from crm_ledger.client import calls
from crm_ledger.client.calls import (
    AwardJobPublic,
    CampaignPublic,
    CampaignsPublic,
    CustomerPublic,
    CustomersPublic,
    ErasurePublic,
    FeedPagePublic,
    LoyaltyAccountPublic,
    RecordPublic,
    RecordsPublic,
    RedemptionPublic,
    parse,
)
from crm_ledger.client.receipts import Receipt
from crm_ledger.client.transport import ASend, Call
from crm_ledger.crm.schemas import FeedEventPublic

Model = TypeVar("Model", bound=BaseModel)


class AsyncResource:
    """What every resource does with a call: send it, and read the answer."""

    def __init__(self, send: ASend) -> None:
        self._send = send

    async def _parsed(self, model: type[Model], call: Call) -> Model:
        answer = await self._send(call)
        return parse(model, answer.content)

    async def _json(self, call: Call) -> dict[str, Any]:
        answer = await self._send(call)
        found: dict[str, Any] = answer.json()
        return found


class AsyncCustomers(AsyncResource):
    """`client.customers`: create, get, list (all pages), erase."""

    async def create(
        self,
        *,
        name: str,
        email: str,
        phone: str | None = None,
        external_ref: str | None = None,
        tags: Sequence[str] = (),
        idempotency_key: str | None = None,
    ) -> CustomerPublic:
        """Create a customer (recorder, admin)."""
        body = calls.customer_body(name, email, phone, external_ref, tags)
        return await self._parsed(CustomerPublic, calls.create_customer(body, idempotency_key))

    async def get(self, customer_id: str) -> CustomerPublic:
        """One customer."""
        return await self._parsed(CustomerPublic, calls.get_customer(customer_id))

    async def list(self, *, page_size: int = calls.PAGE_SIZE) -> AsyncIterator[CustomerPublic]:
        """Every customer in creation order, fetched a page at a time."""
        cursor: str | None = None
        while True:
            page = await self._parsed(CustomersPublic, calls.list_customers(cursor, page_size))
            for item in page.items:
                yield item
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def erase(self, customer_id: str, *, idempotency_key: str | None = None) -> ErasurePublic:
        """Erase the customer's personal data; every proof stays valid (admin)."""
        return await self._parsed(ErasurePublic, calls.erase_customer(customer_id, idempotency_key))


class AsyncInteractions(AsyncResource):
    """`client.interactions`: create one, or many all-or-none."""

    async def create(
        self,
        *,
        customer_id: str,
        type: str,
        channel: str,
        occurred_at: str,
        details: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> RecordPublic:
        """Record one interaction (recorder, admin)."""
        body = calls.interaction_body(customer_id, type, channel, occurred_at, details or {})
        return await self._parsed(RecordPublic, calls.create_interaction(body, idempotency_key))

    async def create_many(
        self, items: Sequence[Mapping[str, Any]], *, idempotency_key: str | None = None
    ) -> list[RecordPublic]:
        """Record several interactions in one transaction (each a dict of `create`'s fields)."""
        call = calls.create_interactions(items, idempotency_key)
        records = await self._parsed(RecordsPublic, call)
        return records.items


class AsyncOrders(AsyncResource):
    """`client.orders`: create."""

    async def create(
        self,
        *,
        customer_id: str,
        order_number: str,
        lines: Sequence[Mapping[str, Any]],
        total: str,
        currency: str,
        status: str,
        idempotency_key: str | None = None,
    ) -> RecordPublic:
        """Record an order; `total` (a decimal string) must equal the lines' sum."""
        body = {
            "customer_id": customer_id,
            "order_number": order_number,
            "lines": [dict(line) for line in lines],
            "total": total,
            "currency": currency,
            "status": status,
        }
        return await self._parsed(RecordPublic, calls.create_order(body, idempotency_key))


class AsyncRecords(AsyncResource):
    """`client.records`: get, and the receipt (optionally waiting for the batch)."""

    async def get(self, record_id: str) -> RecordPublic:
        """One record, with its committed `document` (canonical text)."""
        return await self._parsed(RecordPublic, calls.get_record(record_id))

    async def receipt(
        self, record_id: str, *, wait: bool = False, timeout: float = 60.0
    ) -> Receipt:
        """The record's receipt; with `wait`, polls (honouring Retry-After) until anchored.

        Raises `NotAnchoredYet` when the batch is not on chain (at once without `wait`, after
        `timeout` seconds with it).
        """
        deadline = time.monotonic() + timeout
        while True:
            answer = await self._send(calls.get_receipt(record_id))
            found = calls.receipt_or_wait(answer)
            if isinstance(found, Receipt):
                return found
            if not wait or time.monotonic() + found > deadline:
                raise calls.not_anchored(record_id, timeout if wait else 0)
            await asyncio.sleep(found)


class AsyncAudit(AsyncResource):
    """`client.audit`: verify a record, audit a customer or the ledger, digest, export."""

    async def verify(
        self,
        *,
        record_id: str | None = None,
        receipt: Receipt | Mapping[str, Any] | None = None,
        content: str | Mapping[str, Any] | None = None,
        customer_key: str | None = None,
    ) -> dict[str, Any]:
        """The service's check of a record (by id) or of a receipt you hold: verdict, steps."""
        raw = receipt.data if isinstance(receipt, Receipt) else receipt
        body = {
            "record_id": record_id,
            "receipt": raw,
            "content": content,
            "customer_key": customer_key,
        }
        return await self._json(calls.verify(body))

    async def customer(self, customer_id: str) -> dict[str, Any]:
        """Every record of one customer checked against the chain."""
        return await self._json(calls.audit_customer(customer_id))

    async def ledger(
        self, *, wait: bool = True, timeout: float = 600.0, poll: float = 1.0
    ) -> dict[str, Any]:
        """Start a ledger audit; with `wait`, the finished run (`status` done or failed)."""
        run = await self._json(calls.start_ledger_audit())
        deadline = time.monotonic() + timeout
        while wait and run.get("status") == "running" and time.monotonic() < deadline:
            await asyncio.sleep(poll)
            run = await self._json(calls.latest_ledger_audit())
        return run

    async def digest(self) -> dict[str, Any]:
        """The ledger's current digest, to keep and later prove the ledger only grew."""
        return await self._json(calls.digest())

    async def export(self, *, customer_id: str | None = None, include_keys: bool = True) -> bytes:
        """A bundle (JSON Lines) for `crm-ledger verify BUNDLE --rpc URL`."""
        answer = await self._send(calls.export(customer_id, include_keys))
        return answer.content


class AsyncCampaigns(AsyncResource):
    """`client.campaigns`: create, get, list, pause/resume/close, award and follow awards."""

    async def create(
        self,
        *,
        name: str,
        budget: int,
        rules: Sequence[Mapping[str, Any]] = (),
        starts_at: str | None = None,
        ends_at: str | None = None,
        per_customer_cap: int | None = None,
        points_expire_after: str | None = None,
        idempotency_key: str | None = None,
    ) -> CampaignPublic:
        """Create a campaign; its budget is set on chain (marketing, admin)."""
        body = {
            "name": name,
            "budget": budget,
            "rules": [dict(rule) for rule in rules],
            "starts_at": starts_at,
            "ends_at": ends_at,
            "per_customer_cap": per_customer_cap,
            "points_expire_after": points_expire_after,
        }
        return await self._parsed(CampaignPublic, calls.create_campaign(body, idempotency_key))

    async def get(self, campaign_id: str) -> CampaignPublic:
        """One campaign and where its budget stands."""
        return await self._parsed(CampaignPublic, calls.get_campaign(campaign_id))

    async def list(self) -> list[CampaignPublic]:
        """Every campaign, newest first."""
        campaigns = await self._parsed(CampaignsPublic, calls.list_campaigns())
        return campaigns.items

    async def pause(self, campaign_id: str) -> CampaignPublic:
        """Stop earning and awards until resumed."""
        return await self._parsed(CampaignPublic, calls.change_campaign(campaign_id, "pause"))

    async def resume(self, campaign_id: str) -> CampaignPublic:
        """Earn and award again."""
        return await self._parsed(CampaignPublic, calls.change_campaign(campaign_id, "resume"))

    async def close(self, campaign_id: str) -> CampaignPublic:
        """Close for good."""
        return await self._parsed(CampaignPublic, calls.change_campaign(campaign_id, "close"))

    async def award(
        self,
        campaign_id: str,
        *,
        points: int,
        customer_ids: Sequence[str] | None = None,
        segment: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> AwardJobPublic:
        """Award `points` to each customer (or segment); issued on chain in the background."""
        body = {
            "points": points,
            "customer_ids": list(customer_ids) if customer_ids is not None else None,
            "segment": dict(segment) if segment is not None else None,
        }
        return await self._parsed(AwardJobPublic, calls.award(campaign_id, body, idempotency_key))

    async def get_award(self, campaign_id: str, job_id: str) -> AwardJobPublic:
        """An award's progress."""
        return await self._parsed(AwardJobPublic, calls.get_award(campaign_id, job_id))


class AsyncRedemptions(AsyncResource):
    """`client.redemptions`: create, get."""

    async def create(
        self, *, customer_id: str, points: int, reward_ref: str, idempotency_key: str | None = None
    ) -> RedemptionPublic:
        """Redeem points (burned on chain)."""
        body = {"customer_id": customer_id, "points": points, "reward_ref": reward_ref}
        return await self._parsed(RedemptionPublic, calls.create_redemption(body, idempotency_key))

    async def get(self, redemption_id: str) -> RedemptionPublic:
        """A redemption and whether its burn is on chain."""
        return await self._parsed(RedemptionPublic, calls.get_redemption(redemption_id))


class AsyncLoyalty(AsyncResource):
    """`client.loyalty`: a customer's account."""

    async def account(self, customer_id: str) -> LoyaltyAccountPublic:
        """Address, balances (the chain's included), lots and history."""
        return await self._parsed(LoyaltyAccountPublic, calls.loyalty_account(customer_id))


class AsyncEvents(AsyncResource):
    """`client.events`: the change feed."""

    async def iter(
        self,
        *,
        after: str | None = None,
        types: Sequence[str] | None = None,
        page_size: int = calls.PAGE_SIZE,
        follow: bool = False,
        poll: float = 1.0,
    ) -> AsyncIterator[FeedEventPublic]:
        """Events after the cursor `after`, oldest first, a page at a time.

        Resume later by passing the last event's `cursor` as `after`. Without `follow` it
        stops at the end of the feed; with it, it waits `poll` seconds and asks again.
        Delivery is at least once: deduplicate on `id`.
        """
        cursor = after
        while True:
            page = await self._parsed(FeedPagePublic, calls.events(cursor, types, page_size))
            for item in page.items:
                yield item
            cursor = page.next_cursor
            if not page.has_more:
                if not follow:
                    return
                await asyncio.sleep(poll)
