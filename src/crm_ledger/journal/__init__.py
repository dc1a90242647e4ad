"""The SQL journal: customers, records, API keys and receipts; every write is one transaction."""
