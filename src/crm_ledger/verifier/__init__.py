"""The independent verifier: receipts, bundles and digests checked with the chain alone.

Modules: `chain` (the AuditLedger reads, as a protocol), `rpc` (those reads over JSON-RPC with
httpx and eth_abi), `onchain` (the on-chain steps), `record` (one receipt and its content),
`bundle` (the export format), `check` (a whole bundle), `digest` (the ledger only grew).

It trusts nothing the service says and imports nothing of the service but the pure ledger
format (`crm_ledger.ledger`, `crm_ledger.errors`): no SQLAlchemy, FastAPI or web3
(`tests/verifier/test_imports.py` enforces it). The CLI, the API and the client library use it.
"""
