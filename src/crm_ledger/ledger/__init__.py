"""crm-ledger."""
