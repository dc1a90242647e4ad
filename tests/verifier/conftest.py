"""Verifier fixtures: the chain folder's nodes and freshly deployed AuditLedger."""

from tests.chain.conftest import anvil, hardhat, ledger, node  # noqa: F401  (fixtures)
