"""Salesforce: keep each customer's Contact current with the Bulk API 2.0 (docs/salesforce.md).

Modules: `client` (OAuth 2.0 JWT bearer flow, Bulk API 2.0 ingest over httpx), `contacts` (the
field values sent, the CSV), `sync` (durable state, the `SalesforceSync` worker, the one-shot
sync), `standin` (a local server that follows the documented protocol, for tests and demos),
`cli` (`crm-ledger sync salesforce`, `crm-ledger export salesforce`).
"""
