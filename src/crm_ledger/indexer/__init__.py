"""The chain indexer: AuditLedger and LoyaltyToken events into the CRM view, reorg-safe, and
the reconciliation of the journal against the chain.

`indexer.py` runs the rounds (`Indexer`, `make_indexer`), `source.py` reads the chain over
JSON-RPC, `events.py` decodes logs, `store.py` writes the view and rolls it back,
`reconcile.py` compares the journal and the loyalty tables with the chain. The indexer writes
the change feed (`crm_ledger.feed`); the CRM read models (`crm`) import nothing from here.
"""
