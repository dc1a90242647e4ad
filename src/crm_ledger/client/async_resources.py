"""The resources of `AsyncClient`: `Client`'s (`crm_ledger.client.resources`), awaited.

Exports: `AsyncCustomers`, `AsyncInteractions`, `AsyncOrders`, `AsyncRecords`, `AsyncAudit`,
`AsyncCampaigns`, `AsyncRedemptions`, `AsyncLoyalty`, `AsyncEvents`. List calls are async
iterators that follow the cursor.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import httpx

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
from crm_ledger.client.transport import Call
from crm_ledger.crm.schemas import FeedEventPublic

ASend = Callable[[Call], Awaitable[httpx.Response]]


class AsyncCustomers:
    """`AsyncClient.customers`: create, get, list (all pages), erase."""

    def __init__(self, send: ASend) -> None:
        self._send = send

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
        answer = await self._send(calls.create_customer(body, idempotency_key))
        return parse(CustomerPublic, answer.content)

    async def get(self, customer_id: str) -> CustomerPublic:
        """One customer."""
        return parse(CustomerPublic, (await self._send(calls.get_customer(customer_id))).content)

    async def list(self, *, page_size: int = calls.PAGE_SIZE) -> AsyncIterator[CustomerPublic]:
        """Every customer in creation order, fetched a page at a time."""
        cursor: str | None = None
        while True:
            answer = await self._send(calls.list_customers(cursor, page_size))
            page = parse(CustomersPublic, answer.content)
            for item in page.items:
                yield item
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def erase(self, customer_id: str, *, idempotency_key: str | None = None) -> ErasurePublic:
        """Erase the customer's personal data (admin)."""
        answer = await self._send(calls.erase_customer(customer_id, idempotency_key))
        return parse(ErasurePublic, answer.content)


class AsyncInteractions:
    """`AsyncClient.interactions`: create one, or many all-or-none."""

    def __init__(self, send: ASend) -> None:
        self._send = send

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
        answer = await self._send(calls.create_interaction(body, idempotency_key))
        return parse(RecordPublic, answer.content)

    async def create_many(
        self, items: Sequence[Mapping[str, Any]], *, idempotency_key: str | None = None
    ) -> list[RecordPublic]:
        """Record several interactions in one transaction."""
        answer = await self._send(calls.create_interactions(items, idempotency_key))
        return parse(RecordsPublic, answer.content).items


class AsyncOrders:
    """`AsyncClient.orders`: create."""

    def __init__(self, send: ASend) -> None:
        self._send = send

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
        answer = await self._send(calls.create_order(body, idempotency_key))
        return parse(RecordPublic, answer.content)


class AsyncRecords:
    """`AsyncClient.records`: get, and the receipt (optionally waiting for the batch)."""

    def __init__(self, send: ASend) -> None:
        self._send = send

    async def get(self, record_id: str) -> RecordPublic:
        """One record, with its committed `document`."""
        return parse(RecordPublic, (await self._send(calls.get_record(record_id))).content)

    async def receipt(
        self, record_id: str, *, wait: bool = False, timeout: float = 60.0
    ) -> Receipt:
        """The record's receipt; with `wait`, polls until anchored (see `Records.receipt`)."""
        deadline = time.monotonic() + timeout
        while True:
            found = calls.receipt_or_wait(await self._send(calls.get_receipt(record_id)))
            if isinstance(found, Receipt):
                return found
            if not wait or time.monotonic() + found > deadline:
                raise calls.not_anchored(record_id, timeout if wait else 0)
            await asyncio.sleep(found)


class AsyncEvents:
    """`AsyncClient.events`: the change feed."""

    def __init__(self, send: ASend) -> None:
        self._send = send

    async def iter(
        self,
        *,
        after: str | None = None,
        types: Sequence[str] | None = None,
        page_size: int = calls.PAGE_SIZE,
        follow: bool = False,
        poll: float = 1.0,
    ) -> AsyncIterator[FeedEventPublic]:
        """Events after `after`, oldest first (see `Events.iter`)."""
        cursor = after
        while True:
            answer = await self._send(calls.events(cursor, types, page_size))
            page = parse(FeedPagePublic, answer.content)
            for item in page.items:
                yield item
            cursor = page.next_cursor
            if not page.has_more:
                if not follow:
                    return
                await asyncio.sleep(poll)


class AsyncAudit:
    """`AsyncClient.audit`: verify a record, audit a customer or the ledger, digest, export."""

    def __init__(self, send: ASend) -> None:
        self._send = send

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
        answer: dict[str, Any] = (await self._send(calls.verify(body))).json()
        return answer

    async def customer(self, customer_id: str) -> dict[str, Any]:
        """Every record of one customer checked against the chain."""
        answer: dict[str, Any] = (await self._send(calls.audit_customer(customer_id))).json()
        return answer

    async def ledger(
        self, *, wait: bool = True, timeout: float = 600.0, poll: float = 1.0
    ) -> dict[str, Any]:
        """Start a ledger audit; with `wait`, the finished run (`status` done or failed)."""
        run: dict[str, Any] = (await self._send(calls.start_ledger_audit())).json()
        deadline = time.monotonic() + timeout
        while wait and run.get("status") == "running" and time.monotonic() < deadline:
            await asyncio.sleep(poll)
            run = (await self._send(calls.latest_ledger_audit())).json()
        return run

    async def digest(self) -> dict[str, Any]:
        """The ledger's current digest, to keep and later prove the ledger only grew."""
        answer: dict[str, Any] = (await self._send(calls.digest())).json()
        return answer

    async def export(self, *, customer_id: str | None = None, include_keys: bool = True) -> bytes:
        """A bundle (JSON Lines) for `crm-ledger verify BUNDLE --rpc URL`."""
        return (await self._send(calls.export(customer_id, include_keys))).content


class AsyncCampaigns:
    """`AsyncClient.campaigns`: create, get, list, pause/resume/close, award and follow awards."""

    def __init__(self, send: ASend) -> None:
        self._send = send

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
        return parse(
            CampaignPublic, (await self._send(calls.create_campaign(body, idempotency_key))).content
        )

    async def get(self, campaign_id: str) -> CampaignPublic:
        """One campaign and where its budget stands."""
        return parse(CampaignPublic, (await self._send(calls.get_campaign(campaign_id))).content)

    async def list(self) -> list[CampaignPublic]:
        """Every campaign, newest first."""
        return parse(CampaignsPublic, (await self._send(calls.list_campaigns())).content).items

    async def pause(self, campaign_id: str) -> CampaignPublic:
        """Stop earning and awards until resumed."""
        return parse(
            CampaignPublic,
            (await self._send(calls.change_campaign(campaign_id, "pause", None))).content,
        )

    async def resume(self, campaign_id: str) -> CampaignPublic:
        """Earn and award again."""
        return parse(
            CampaignPublic,
            (await self._send(calls.change_campaign(campaign_id, "resume", None))).content,
        )

    async def close(self, campaign_id: str) -> CampaignPublic:
        """Close for good."""
        return parse(
            CampaignPublic,
            (await self._send(calls.change_campaign(campaign_id, "close", None))).content,
        )

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
        answer = await self._send(calls.award(campaign_id, body, idempotency_key))
        return parse(AwardJobPublic, answer.content)

    async def get_award(self, campaign_id: str, job_id: str) -> AwardJobPublic:
        """An award's progress."""
        return parse(
            AwardJobPublic, (await self._send(calls.get_award(campaign_id, job_id))).content
        )


class AsyncRedemptions:
    """`AsyncClient.redemptions`: create, get."""

    def __init__(self, send: ASend) -> None:
        self._send = send

    async def create(
        self, *, customer_id: str, points: int, reward_ref: str, idempotency_key: str | None = None
    ) -> RedemptionPublic:
        """Redeem points (burned on chain)."""
        body = {"customer_id": customer_id, "points": points, "reward_ref": reward_ref}
        answer = await self._send(calls.create_redemption(body, idempotency_key))
        return parse(RedemptionPublic, answer.content)

    async def get(self, redemption_id: str) -> RedemptionPublic:
        """A redemption and whether its burn is on chain."""
        return parse(
            RedemptionPublic, (await self._send(calls.get_redemption(redemption_id))).content
        )


class AsyncLoyalty:
    """`AsyncClient.loyalty`: a customer's account."""

    def __init__(self, send: ASend) -> None:
        self._send = send

    async def account(self, customer_id: str) -> LoyaltyAccountPublic:
        """Address, balances (the chain's included), lots and history."""
        answer = await self._send(calls.loyalty_account(customer_id))
        return parse(LoyaltyAccountPublic, answer.content)
