"""Auditing: the service's audits of records, customers' histories and the whole ledger.

Modules: `report`/`reports` (findings), `chain` (the service's read-only chain access),
`snapshot` (long reads that do not block writers), `ledger` (the ledger audit), `customer`,
`export` (bundles), `cli`. They read the database; the independent verifier they rely on,
which needs none, is `crm_ledger.verifier`.
"""
