"""SQLAlchemy 2 models: the journal (customers, records, batches) and service bookkeeping, one
module per part of the service (`base`, `journal`, `loyalty`, `indexer`, `ingest`, `outbound`).

Exports: `Base`, `Customer`, `Record`, `Batch`, `BatchStatus`, `Deployment`, `ApiKey`,
`IdempotencyEntry`, `AuditReport`, and the loyalty tables `LoyaltyWallet`, `LoyaltyCampaign`,
`LoyaltyChainOp`, `LoyaltyAwardJob`, `LoyaltyIssuance`, `LoyaltyRedemption`, `LoyaltyLotUse`,
`LoyaltyExpiration`, `LoyaltyCursor`; and the indexer's and CRM view's `IndexerStream`,
`IndexedBlock`, `IndexedBatch`, `IndexedTokenEvent`, `IndexedBalance`, `FeedEvent`, `FeedMark`,
`ReconciliationReport`; `IdempotencySubject` (issue 10); commerce ingest's `IngestSource`,
`IngestDelivery`, `IngestCustomerLink`, `IngestOrder`, `IngestClawback`; the Salesforce sync's
`SalesforceContact`, `SalesforceJob`, `SalesforceCursor`; the relays' `OutboundCursor`,
`WebhookSubscription`, `WebhookDelivery`; the column helpers `PK`, `UTCDateTime`, `utcnow`,
`new_id`, `new_ids`.

Public ids are UUID strings; an integer `pk` gives a stable insertion order for cursors and for
the anchorer, which cuts pending records (seq IS NULL) in `pk` order.
"""

from __future__ import annotations

from crm_ledger.db.models.base import PK, Base, UTCDateTime, new_id, new_ids, utcnow
from crm_ledger.db.models.indexer import (
    FeedEvent,
    FeedMark,
    IndexedBalance,
    IndexedBatch,
    IndexedBlock,
    IndexedTokenEvent,
    IndexerStream,
    ReconciliationReport,
)
from crm_ledger.db.models.ingest import (
    IngestClawback,
    IngestCustomerLink,
    IngestDelivery,
    IngestOrder,
    IngestSource,
)
from crm_ledger.db.models.journal import (
    ApiKey,
    AuditReport,
    Batch,
    BatchStatus,
    Customer,
    Deployment,
    IdempotencyEntry,
    IdempotencySubject,
    Record,
)
from crm_ledger.db.models.loyalty import (
    LoyaltyAwardJob,
    LoyaltyCampaign,
    LoyaltyChainOp,
    LoyaltyCursor,
    LoyaltyExpiration,
    LoyaltyIssuance,
    LoyaltyLotUse,
    LoyaltyRedemption,
    LoyaltyWallet,
)
from crm_ledger.db.models.outbound import (
    OutboundCursor,
    SalesforceContact,
    SalesforceCursor,
    SalesforceJob,
    WebhookDelivery,
    WebhookSubscription,
)

__all__ = [
    "PK",
    "ApiKey",
    "AuditReport",
    "Base",
    "Batch",
    "BatchStatus",
    "Customer",
    "Deployment",
    "FeedEvent",
    "FeedMark",
    "IdempotencyEntry",
    "IdempotencySubject",
    "IndexedBalance",
    "IndexedBatch",
    "IndexedBlock",
    "IndexedTokenEvent",
    "IndexerStream",
    "IngestClawback",
    "IngestCustomerLink",
    "IngestDelivery",
    "IngestOrder",
    "IngestSource",
    "LoyaltyAwardJob",
    "LoyaltyCampaign",
    "LoyaltyChainOp",
    "LoyaltyCursor",
    "LoyaltyExpiration",
    "LoyaltyIssuance",
    "LoyaltyLotUse",
    "LoyaltyRedemption",
    "LoyaltyWallet",
    "OutboundCursor",
    "ReconciliationReport",
    "Record",
    "SalesforceContact",
    "SalesforceCursor",
    "SalesforceJob",
    "UTCDateTime",
    "WebhookDelivery",
    "WebhookSubscription",
    "new_id",
    "new_ids",
    "utcnow",
]
