"""What the CRM endpoints answer: the customer 360 view, the customer list, the change feed.

Exports: `LedgerState`, `TimelineItem`, `Timeline`, `LoyaltySummary`, `IntegrityStatus`,
`LedgerCounts`, `CustomerProfile`, `CustomerView`, `CustomerSummary`, `CustomerSummaries`,
`FeedEventPublic`, `FeedPagePublic`, `ReconciliationPublic`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from crm_ledger.schemas import CustomerPublic

LedgerStateName = Literal["pending", "anchored", "confirmed", "failed"]
TimelineKind = Literal["interaction", "order", "erasure", "reward", "redemption", "expiry"]


class LedgerState(BaseModel):
    """Where an item stands on chain.

    `pending`: not on chain yet (no batch, or its transaction is not mined). `anchored`: the
    transaction was mined, as the anchorer (or loyalty worker) recorded it. `confirmed`: the
    indexer read its event with the configured confirmations; `tx_hash` and `block_number` are
    then the chain's. `failed`: the contract refused it (loyalty only). `drift` is set when
    the chain holds something else for this item (see reconciliation).
    """

    state: LedgerStateName
    batch_id: int | None = None
    seq: int | None = None
    epoch: int | None = None
    tx_hash: str | None = None
    block_number: int | None = None
    block_hash: str | None = None
    drift: str | None = None


class TimelineItem(BaseModel):
    """One interaction, order, erasure, reward (a lot), redemption or expiry."""

    kind: TimelineKind
    id: str = Field(description="record id, lot id, redemption id, or the expired lot's id")
    at: str = Field(description="when it was recorded (RFC 3339, UTC)")
    content: dict[str, Any] | None = Field(
        default=None, description="a record's committed body; null once erased"
    )
    details: dict[str, Any] = Field(default_factory=dict, description="loyalty fields")
    ledger: LedgerState


class Timeline(BaseModel):
    """Newest first; pass `next_cursor` as `timeline_cursor` for older items (null: no more)."""

    items: list[TimelineItem]
    next_cursor: str | None


class LoyaltySummary(BaseModel):
    """The customer's loyalty address and balance as the chain reports it."""

    address: str
    balance: int = Field(description="points, from the indexed LoyaltyToken Transfer events")
    as_of_block: int | None = Field(description="the last block the indexer has read")


class IntegrityStatus(BaseModel):
    """The customer's integrity as the latest finished ledger audit found it.

    `clean`: the audit found nothing touching this customer's records. `discrepancies`: it did
    (listed). `unknown`: the ledger has more findings than the report lists. `failed`: the
    audit could not finish. `never_audited`: no audit has run.
    """

    status: Literal["never_audited", "failed", "clean", "discrepancies", "unknown"]
    report_id: str | None = None
    finished_at: str | None = None
    ledger_clean: bool | None = None
    ledger_discrepancy_count: int | None = None
    audit_running: bool = False
    discrepancies: list[dict[str, Any]] = Field(default_factory=list)
    detail: str


class LedgerCounts(BaseModel):
    """How many of the customer's records are in each ledger state."""

    pending: int
    anchored: int
    confirmed: int


class ShopCustomerId(BaseModel):
    """The customer's id in a shop that sends webhooks (commerce ingest, issue 11)."""

    source_id: str
    platform: str
    external_id: str


class CustomerProfile(CustomerPublic):
    """A customer's profile; personal fields are null once erased."""

    # Commerce ingest (issue 11): the shops' ids for this customer (deleted on erasure).
    external_ids: list[ShopCustomerId] = Field(default_factory=list)


class CustomerView(BaseModel):
    """The customer 360 view: profile, ledger states, loyalty, integrity, timeline."""

    customer: CustomerProfile
    records: LedgerCounts
    loyalty: LoyaltySummary | None = Field(description="null when the customer has no address")
    integrity: IntegrityStatus
    timeline: Timeline


class CustomerSummary(CustomerPublic):
    """A customer in the CRM list."""

    last_interaction_at: str | None
    loyalty_balance: int | None = Field(description="null when the customer has no address")


class CustomerSummaries(BaseModel):
    """A page of the CRM list; pass `next_cursor` as `cursor` (same filters and sort)."""

    items: list[CustomerSummary]
    next_cursor: str | None


class FeedEventPublic(BaseModel):
    """One change-feed event; deduplicate on `id`, resume after it with `cursor`."""

    id: str
    cursor: str
    type: str
    created_at: str
    customer_id: str | None
    data: dict[str, Any]


class FeedPagePublic(BaseModel):
    """Events after the requested cursor, oldest first."""

    items: list[FeedEventPublic]
    next_cursor: str = Field(description="pass as `after`; unchanged when there was nothing new")
    has_more: bool


class ReconciliationPublic(BaseModel):
    """A stored reconciliation run."""

    id: str
    status: Literal["requested", "running", "done", "failed"]
    trigger: str
    requested_at: str | None
    started_at: str | None
    finished_at: str | None
    drift_count: int
    repaired_count: int
    error: str | None
    report: dict[str, Any] | None
