"""The chain indexer: AuditLedger and LoyaltyToken events into the CRM view, reorg-safe.

`indexer.py` runs the rounds (`Indexer`, `make_indexer`), `source.py` reads the chain over
JSON-RPC, `events.py` decodes logs, `store.py` writes the view and rolls it back. The package
itself imports nothing, so `crm` can use `indexer.source` without a cycle.
"""
