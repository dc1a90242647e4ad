"""Auditing: prove records, customers' histories and the whole ledger against the chain.

Modules: `report` (findings), `chain` (what audits read from the chain), `snapshot` (long
reads that do not block writers), `ledger` (the ledger audit). The offline verifier and the
bundle and digest formats need no database and import none.
"""
