# Generated from async_resources.py by scripts/unasync_client.py: do not edit.
# Change the async module and run `python scripts/unasync_client.py`.
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

import time
from collections.abc import Iterator, Mapping, Sequence
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
from crm_ledger.client.transport import Call, Send
from crm_ledger.crm.schemas import FeedEventPublic

Model = TypeVar("Model", bound=BaseModel)


class Resource:
    """What every resource does with a call: send it, and read the answer."""

    def __init__(self, send: Send) -> None:
        self._send = send

    def _parsed(self, model: type[Model], call: Call) -> Model:
        answer = self._send(call)
        return parse(model, answer.content)

    def _json(self, call: Call) -> dict[str, Any]:
        answer = self._send(call)
        found: dict[str, Any] = answer.json()
        return found


class Customers(Resource):
    """`client.customers`: create, get, list (all pages), erase."""

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
        return self._parsed(CustomerPublic, calls.create_customer(body, idempotency_key))

    def get(self, customer_id: str) -> CustomerPublic:
        """One customer."""
        return self._parsed(CustomerPublic, calls.get_customer(customer_id))

    def list(self, *, page_size: int = calls.PAGE_SIZE) -> Iterator[CustomerPublic]:
        """Every customer in creation order, fetched a page at a time."""
        cursor: str | None = None
        while True:
            page = self._parsed(CustomersPublic, calls.list_customers(cursor, page_size))
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def erase(self, customer_id: str, *, idempotency_key: str | None = None) -> ErasurePublic:
        """Erase the customer's personal data; every proof stays valid (admin)."""
        return self._parsed(ErasurePublic, calls.erase_customer(customer_id, idempotency_key))


class Interactions(Resource):
    """`client.interactions`: create one, or many all-or-none."""

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
        return self._parsed(RecordPublic, calls.create_interaction(body, idempotency_key))

    def create_many(
        self, items: Sequence[Mapping[str, Any]], *, idempotency_key: str | None = None
    ) -> list[RecordPublic]:
        """Record several interactions in one transaction (each a dict of `create`'s fields)."""
        call = calls.create_interactions(items, idempotency_key)
        records = self._parsed(RecordsPublic, call)
        return records.items


class Orders(Resource):
    """`client.orders`: create."""

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
        return self._parsed(RecordPublic, calls.create_order(body, idempotency_key))


class Records(Resource):
    """`client.records`: get, and the receipt (optionally waiting for the batch)."""

    def get(self, record_id: str) -> RecordPublic:
        """One record, with its committed `document` (canonical text)."""
        return self._parsed(RecordPublic, calls.get_record(record_id))

    def receipt(self, record_id: str, *, wait: bool = False, timeout: float = 60.0) -> Receipt:
        """The record's receipt; with `wait`, polls (honouring Retry-After) until anchored.

        Raises `NotAnchoredYet` when the batch is not on chain (at once without `wait`, after
        `timeout` seconds with it).
        """
        deadline = time.monotonic() + timeout
        while True:
            answer = self._send(calls.get_receipt(record_id))
            found = calls.receipt_or_wait(answer)
            if isinstance(found, Receipt):
                return found
            if not wait or time.monotonic() + found > deadline:
                raise calls.not_anchored(record_id, timeout if wait else 0)
            time.sleep(found)


class Audit(Resource):
    """`client.audit`: verify a record, audit a customer or the ledger, digest, export."""

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
        return self._json(calls.verify(body))

    def customer(self, customer_id: str) -> dict[str, Any]:
        """Every record of one customer checked against the chain."""
        return self._json(calls.audit_customer(customer_id))

    def ledger(
        self, *, wait: bool = True, timeout: float = 600.0, poll: float = 1.0
    ) -> dict[str, Any]:
        """Start a ledger audit; with `wait`, the finished run (`status` done or failed)."""
        run = self._json(calls.start_ledger_audit())
        deadline = time.monotonic() + timeout
        while wait and run.get("status") == "running" and time.monotonic() < deadline:
            time.sleep(poll)
            run = self._json(calls.latest_ledger_audit())
        return run

    def digest(self) -> dict[str, Any]:
        """The ledger's current digest, to keep and later prove the ledger only grew."""
        return self._json(calls.digest())

    def export(self, *, customer_id: str | None = None, include_keys: bool = True) -> bytes:
        """A bundle (JSON Lines) for `crm-ledger verify BUNDLE --rpc URL`."""
        answer = self._send(calls.export(customer_id, include_keys))
        return answer.content


class Campaigns(Resource):
    """`client.campaigns`: create, get, list, pause/resume/close, award and follow awards."""

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
        return self._parsed(CampaignPublic, calls.create_campaign(body, idempotency_key))

    def get(self, campaign_id: str) -> CampaignPublic:
        """One campaign and where its budget stands."""
        return self._parsed(CampaignPublic, calls.get_campaign(campaign_id))

    def list(self) -> list[CampaignPublic]:
        """Every campaign, newest first."""
        campaigns = self._parsed(CampaignsPublic, calls.list_campaigns())
        return campaigns.items

    def pause(self, campaign_id: str) -> CampaignPublic:
        """Stop earning and awards until resumed."""
        return self._parsed(CampaignPublic, calls.change_campaign(campaign_id, "pause"))

    def resume(self, campaign_id: str) -> CampaignPublic:
        """Earn and award again."""
        return self._parsed(CampaignPublic, calls.change_campaign(campaign_id, "resume"))

    def close(self, campaign_id: str) -> CampaignPublic:
        """Close for good."""
        return self._parsed(CampaignPublic, calls.change_campaign(campaign_id, "close"))

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
        return self._parsed(AwardJobPublic, calls.award(campaign_id, body, idempotency_key))

    def get_award(self, campaign_id: str, job_id: str) -> AwardJobPublic:
        """An award's progress."""
        return self._parsed(AwardJobPublic, calls.get_award(campaign_id, job_id))


class Redemptions(Resource):
    """`client.redemptions`: create, get."""

    def create(
        self, *, customer_id: str, points: int, reward_ref: str, idempotency_key: str | None = None
    ) -> RedemptionPublic:
        """Redeem points (burned on chain)."""
        body = {"customer_id": customer_id, "points": points, "reward_ref": reward_ref}
        return self._parsed(RedemptionPublic, calls.create_redemption(body, idempotency_key))

    def get(self, redemption_id: str) -> RedemptionPublic:
        """A redemption and whether its burn is on chain."""
        return self._parsed(RedemptionPublic, calls.get_redemption(redemption_id))


class Loyalty(Resource):
    """`client.loyalty`: a customer's account."""

    def account(self, customer_id: str) -> LoyaltyAccountPublic:
        """Address, balances (the chain's included), lots and history."""
        return self._parsed(LoyaltyAccountPublic, calls.loyalty_account(customer_id))


class Events(Resource):
    """`client.events`: the change feed."""

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
            page = self._parsed(FeedPagePublic, calls.events(cursor, types, page_size))
            yield from page.items
            cursor = page.next_cursor
            if not page.has_more:
                if not follow:
                    return
                time.sleep(poll)
