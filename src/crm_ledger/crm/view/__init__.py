"""The customer 360 view and the CRM customer list, read from the journal, the loyalty tables
and what the indexer derived from the chain.

Exports: `customer_view`, `customer_integrity`, `list_customers`, `SORT_KEYS`,
`INDEXED_SORT_KEYS`, `TIMELINE_KINDS`, `DEFAULT_PAGE_SIZE`, `MAX_PAGE_SIZE`,
`DEFAULT_TIMELINE_SIZE`, `MAX_TIMELINE_SIZE`.

Modules: `customer` (the 360 view), `timeline` (its items and their ledger states),
`integrity` (the latest audit's verdict on one customer), `customers` (the list, paged by keyset
cursor), `common` (epochs, the cursor codec, the 422 for bad parameters).
"""

from crm_ledger.crm.view.customer import DEFAULT_TIMELINE_SIZE, MAX_TIMELINE_SIZE, customer_view
from crm_ledger.crm.view.customers import (
    DEFAULT_PAGE_SIZE,
    INDEXED_SORT_KEYS,
    MAX_PAGE_SIZE,
    SORT_KEYS,
    list_customers,
)
from crm_ledger.crm.view.integrity import customer_integrity
from crm_ledger.crm.view.timeline import TIMELINE_KINDS

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_TIMELINE_SIZE",
    "INDEXED_SORT_KEYS",
    "MAX_PAGE_SIZE",
    "MAX_TIMELINE_SIZE",
    "SORT_KEYS",
    "TIMELINE_KINDS",
    "customer_integrity",
    "customer_view",
    "list_customers",
]
