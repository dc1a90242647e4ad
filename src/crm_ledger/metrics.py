"""Prometheus metrics: every metric object the service exports is defined here."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

anchoring_lag_seconds = Gauge(
    "crm_ledger_anchoring_lag_seconds", "Age of the oldest record not yet cut into a batch"
)
records_pending = Gauge("crm_ledger_records_pending", "Records waiting for a batch")
batches_anchored_total = Counter(
    "crm_ledger_batches_anchored_total", "Batches whose anchor transaction was mined"
)
anchor_gas_used_total = Counter(
    "crm_ledger_anchor_gas_used_total", "Gas used by mined anchor transactions"
)
