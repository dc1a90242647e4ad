"""Outbound: the change feed carried to the systems around the ledger."""
