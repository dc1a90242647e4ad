"""Resources as a user thinks of them, for `Client` (sync) and `AsyncClient` (async).

Exports: `Customers`, `Interactions`, `Orders`, `Records`, `Audit`, `Campaigns`,
`Redemptions`, `Loyalty`, `Events`; their async twins are in `async_resources`.

Each method builds its request in `calls` and sends it through the client's `_send`, which
retries and maps problems to exceptions. List calls return iterators that follow the cursor.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
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

Send = Callable[[Call], httpx.Response]


# Sync ------------------------------------------------------------------------------------


class Customers:
    """`client.customers`: create, get, list (all pages), erase."""

    def __init__(self, send: Send) -> None:
        self._send = send

    def create(
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
        return parse(
            CustomerPublic, self._send(calls.create_customer(body, idempotency_key)).content
        )

    def get(self, customer_id: str) -> CustomerPublic:
        """One customer."""
        return parse(CustomerPublic, self._send(calls.get_customer(customer_id)).content)

    def list(self, *, page_size: int = calls.PAGE_SIZE) -> Iterator[CustomerPublic]:
        """Every customer in creation order, fetched a page at a time."""
        cursor: str | None = None
        while True:
            page = parse(
                CustomersPublic, self._send(calls.list_customers(cursor, page_size)).content
            )
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def erase(self, customer_id: str, *, idempotency_key: str | None = None) -> ErasurePublic:
        """Erase the customer's personal data; every proof stays valid (admin)."""
        answer = self._send(calls.erase_customer(customer_id, idempotency_key))
        return parse(ErasurePublic, answer.content)


class Interactions:
    """`client.interactions`: create one, or many all-or-none."""

    def __init__(self, send: Send) -> None:
        self._send = send

    def create(
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
        return parse(
            RecordPublic, self._send(calls.create_interaction(body, idempotency_key)).content
        )

    def create_many(
        self, items: Sequence[Mapping[str, Any]], *, idempotency_key: str | None = None
    ) -> list[RecordPublic]:
        """Record several interactions in one transaction (each a dict of `create`'s fields)."""
        answer = self._send(calls.create_interactions(items, idempotency_key))
        return parse(RecordsPublic, answer.content).items


class Orders:
    """`client.orders`: create."""

    def __init__(self, send: Send) -> None:
        self._send = send

    def create(
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
        return parse(RecordPublic, self._send(calls.create_order(body, idempotency_key)).content)


class Records:
    """`client.records`: get, and the receipt (optionally waiting for the batch)."""

    def __init__(self, send: Send) -> None:
        self._send = send

    def get(self, record_id: str) -> RecordPublic:
        """One record, with its committed `document` (canonical text)."""
        return parse(RecordPublic, self._send(calls.get_record(record_id)).content)

    def receipt(self, record_id: str, *, wait: bool = False, timeout: float = 60.0) -> Receipt:
        """The record's receipt; with `wait`, polls (honouring Retry-After) until anchored.

        Raises `NotAnchoredYet` when the batch is not on chain (at once without `wait`, after
        `timeout` seconds with it).
        """
        deadline = time.monotonic() + timeout
        while True:
            found = calls.receipt_or_wait(self._send(calls.get_receipt(record_id)))
            if isinstance(found, Receipt):
                return found
            if not wait or time.monotonic() + found > deadline:
                raise calls.not_anchored(record_id, timeout if wait else 0)
            time.sleep(found)


class Audit:
    """`client.audit`: verify a record, audit a customer or the ledger, digest, export."""

    def __init__(self, send: Send) -> None:
        self._send = send

    def verify(
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
        answer: dict[str, Any] = self._send(calls.verify(body)).json()
        return answer

    def customer(self, customer_id: str) -> dict[str, Any]:
        """Every record of one customer checked against the chain."""
        answer: dict[str, Any] = self._send(calls.audit_customer(customer_id)).json()
        return answer

    def ledger(
        self, *, wait: bool = True, timeout: float = 600.0, poll: float = 1.0
    ) -> dict[str, Any]:
        """Start a ledger audit; with `wait`, the finished run (`status` done or failed)."""
        run: dict[str, Any] = self._send(calls.start_ledger_audit()).json()
        deadline = time.monotonic() + timeout
        while wait and run.get("status") == "running" and time.monotonic() < deadline:
            time.sleep(poll)
            run = self._send(calls.latest_ledger_audit()).json()
        return run

    def digest(self) -> dict[str, Any]:
        """The ledger's current digest, to keep and later prove the ledger only grew."""
        answer: dict[str, Any] = self._send(calls.digest()).json()
        return answer

    def export(self, *, customer_id: str | None = None, include_keys: bool = True) -> bytes:
        """A bundle (JSON Lines) for `crm-ledger verify BUNDLE --rpc URL`."""
        return self._send(calls.export(customer_id, include_keys)).content


class Campaigns:
    """`client.campaigns`: create, get, list, pause/resume/close, award and follow awards."""

    def __init__(self, send: Send) -> None:
        self._send = send

    def create(
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
            CampaignPublic, self._send(calls.create_campaign(body, idempotency_key)).content
        )

    def get(self, campaign_id: str) -> CampaignPublic:
        """One campaign and where its budget stands."""
        return parse(CampaignPublic, self._send(calls.get_campaign(campaign_id)).content)

    def list(self) -> list[CampaignPublic]:
        """Every campaign, newest first."""
        return parse(CampaignsPublic, self._send(calls.list_campaigns()).content).items

    def pause(self, campaign_id: str) -> CampaignPublic:
        """Stop earning and awards until resumed."""
        return parse(
            CampaignPublic, self._send(calls.change_campaign(campaign_id, "pause", None)).content
        )

    def resume(self, campaign_id: str) -> CampaignPublic:
        """Earn and award again."""
        return parse(
            CampaignPublic, self._send(calls.change_campaign(campaign_id, "resume", None)).content
        )

    def close(self, campaign_id: str) -> CampaignPublic:
        """Close for good."""
        return parse(
            CampaignPublic, self._send(calls.change_campaign(campaign_id, "close", None)).content
        )

    def award(
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
        answer = self._send(calls.award(campaign_id, body, idempotency_key))
        return parse(AwardJobPublic, answer.content)

    def get_award(self, campaign_id: str, job_id: str) -> AwardJobPublic:
        """An award's progress."""
        return parse(AwardJobPublic, self._send(calls.get_award(campaign_id, job_id)).content)


class Redemptions:
    """`client.redemptions`: create, get."""

    def __init__(self, send: Send) -> None:
        self._send = send

    def create(
        self, *, customer_id: str, points: int, reward_ref: str, idempotency_key: str | None = None
    ) -> RedemptionPublic:
        """Redeem points (burned on chain)."""
        body = {"customer_id": customer_id, "points": points, "reward_ref": reward_ref}
        answer = self._send(calls.create_redemption(body, idempotency_key))
        return parse(RedemptionPublic, answer.content)

    def get(self, redemption_id: str) -> RedemptionPublic:
        """A redemption and whether its burn is on chain."""
        return parse(RedemptionPublic, self._send(calls.get_redemption(redemption_id)).content)


class Loyalty:
    """`client.loyalty`: a customer's account."""

    def __init__(self, send: Send) -> None:
        self._send = send

    def account(self, customer_id: str) -> LoyaltyAccountPublic:
        """Address, balances (the chain's included), lots and history."""
        answer = self._send(calls.loyalty_account(customer_id))
        return parse(LoyaltyAccountPublic, answer.content)


class Events:
    """`client.events`: the change feed."""

    def __init__(self, send: Send) -> None:
        self._send = send

    def iter(
        self,
        *,
        after: str | None = None,
        types: Sequence[str] | None = None,
        page_size: int = calls.PAGE_SIZE,
        follow: bool = False,
        poll: float = 1.0,
    ) -> Iterator[FeedEventPublic]:
        """Events after the cursor `after`, oldest first, a page at a time.

        Resume later by passing the last event's `cursor` as `after`. Without `follow` it
        stops at the end of the feed; with it, it waits `poll` seconds and asks again.
        Delivery is at least once: deduplicate on `id`.
        """
        cursor = after
        while True:
            page = parse(FeedPagePublic, self._send(calls.events(cursor, types, page_size)).content)
            yield from page.items
            cursor = page.next_cursor
            if not page.has_more:
                if not follow:
                    return
                time.sleep(poll)
