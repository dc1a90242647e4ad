"""The public JSON shapes of customers, records and record checks, and the change feed's event
types: one definition that the API answers with and the client library reads (pydantic only: no
FastAPI, SQLAlchemy or web3).

Exports: `EventType`, `CustomerPublic`, `CustomersPublic`, `RecordPublic`, `RecordsPublic`,
`ReceiptPending`, `BatchRefPublic`, `ChainRefPublic`, `ReceiptPublic`, `DigestPublic`,
`RecordVerifyRequest`, `ErasurePublic`.

Request shapes live in `crm_ledger.journal.schemas` and `crm_ledger.loyalty.schemas` (pydantic
only as well); the change feed's in `crm_ledger.crm.schemas`, the shop sources' in
`crm_ledger.ingest.schemas`, the webhook subscriptions' in `crm_ledger.outbound.webhooks.schemas`.
"""

from __future__ import annotations

import enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class EventType(enum.StrEnum):
    """Every event type the feed carries."""

    #: The indexer saw the record's batch on chain with the configured confirmations.
    RECORD_ANCHORED = "record.anchored"
    #: A reorg took that batch's block away; the record will be anchored again.
    RECORD_UNANCHORED = "record.unanchored"
    REWARD_ISSUED = "reward.issued"
    REWARD_REDEEMED = "reward.redeemed"
    REWARD_EXPIRED = "reward.expired"
    #: A reorg took away the block of a reward.issued / redeemed / expired event.
    REWARD_RETRACTED = "reward.retracted"
    #: Reconciliation found a new disagreement between the database and the chain.
    DRIFT_DETECTED = "drift.detected"
    #: A webhook subscription was paused after a run of failed deliveries (issue 12).
    SUBSCRIPTION_PAUSED = "subscription.paused"


class CustomerPublic(BaseModel):
    """A customer; personal fields are null once erased, and for roles that do not see them."""

    id: str
    name: str | None
    email: str | None
    phone: str | None
    external_ref: str | None
    tags: list[str]
    created_at: str
    erased_at: str | None


class CustomersPublic(BaseModel):
    """A page of customers; pass `next_cursor` as `cursor` for the next page (null: no more)."""

    items: list[CustomerPublic]
    next_cursor: str | None


class RecordPublic(BaseModel):
    """A journal record: the committed body and where it stands in anchoring."""

    id: str
    customer_id: str
    kind: str = Field(description='"interaction", "order", "erasure" or "access"')
    content: dict[str, Any] | None = Field(description="the body of the committed document")
    document: str | None = Field(
        default=None,
        description="the committed document's exact canonical JSON text (RFC 8785), the bytes "
        "the commitment is over: pass it as `content` to POST /v1/audit/verify or to a "
        "verifier; null once the customer's data was erased",
    )
    recorded_at: str
    commitment: str
    status: Literal["pending", "anchored"]
    seq: int | None
    batch_id: int | None
    receipt_url: str


class RecordsPublic(BaseModel):
    """Records written by one batch request, in request order."""

    items: list[RecordPublic]


class ReceiptPending(BaseModel):
    """The record is in the journal but its batch is not on chain yet: ask again later."""

    status: Literal["pending"]
    record_id: str
    retry_after: int
    detail: str


class BatchRefPublic(BaseModel):
    """An anchored batch as a receipt or a digest names it (docs/ledger-format.md)."""

    id: int
    first_seq: int
    count: int
    root: str = Field(description="the batch's Merkle root, 0x-hex")
    previous_head: str = Field(description="the running head before this batch, 0x-hex")
    head: str = Field(
        description="SHA-256(previous_head ‖ root ‖ first_seq ‖ count), 0x-hex: the whole "
        "ledger's digest after this batch"
    )


class ChainRefPublic(BaseModel):
    """Where a batch is anchored: the chain, the contract of the ledger's epoch, the
    transaction and its block."""

    chain_id: int
    contract: str
    epoch: int
    tx_hash: str
    block_number: int
    block_hash: str


class ReceiptPublic(BaseModel):
    """A record's inclusion receipt, format "crm-ledger/receipt/v1" (docs/ledger-format.md):
    everything a verifier needs besides the record's content, its key and the chain."""

    format: Literal["crm-ledger/receipt/v1"]
    record_id: str
    seq: int
    leaf_input: str = Field(description="the 74-byte leaf input, 0x-hex")
    leaf_hash: str
    leaf_index: int
    tree_size: int
    audit_path: list[str] = Field(description="the RFC 9162 inclusion proof, 0x-hex nodes")
    batch: BatchRefPublic
    chain: ChainRefPublic


class DigestPublic(BaseModel):
    """The ledger's head after one anchored batch, format "crm-ledger/digest/v1": save it and
    prove later that the ledger only grew (`crm-ledger verify --since`)."""

    format: Literal["crm-ledger/digest/v1"]
    batch: BatchRefPublic
    chain: ChainRefPublic


class RecordVerifyRequest(BaseModel):
    """A receipt to check with the record's content and key, or just a record id.

    Give `record_id` to have the service fetch the record's receipt and committed document
    itself; give `receipt` (and optionally `content`, `customer_key`) to check what you hold.
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"record_id": "0192f1c4-6a4e-7c3a-9b1e-2f6d1a0b9c8d"}]},
    )

    record_id: str | None = Field(
        default=None,
        description="Check this record: its receipt and its committed document as the service "
        "stores them (the record must be anchored). Not with `receipt`.",
    )
    receipt: Any = Field(
        default=None,
        description='A "crm-ledger/receipt/v1" receipt, as JSON. Not with `record_id`.',
    )
    content: Any = Field(
        default=None,
        description="The record's canonical JSON text (a string: the record's `document`), or "
        "its document (an object, canonicalised with RFC 8785); omit to check the receipt "
        "without the content",
    )
    customer_key: str | None = Field(
        default=None,
        description="The customer's 32-byte key as 0x-hex; omitted, the service's stored key "
        "for the record is used",
    )


class ErasurePublic(BaseModel):
    """What an erasure did."""

    customer_id: str
    erased_at: str
    erased_records: int
    erasure_record_id: str
    already_erased: bool
