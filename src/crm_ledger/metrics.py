"""Prometheus metrics: every metric object the service exports is defined here."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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

http_requests_total = Counter(
    "crm_ledger_http_requests_total",
    "HTTP requests answered, by method, route template and status code",
    ["method", "route", "status"],
)
http_request_duration_seconds = Histogram(
    "crm_ledger_http_request_duration_seconds",
    "Time from the first byte of a request to the last byte of its response",
    ["method", "route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
records_written_total = Counter(
    "crm_ledger_records_written_total", "Records committed to the journal, by kind", ["kind"]
)
group_commit_size = Histogram(
    "crm_ledger_group_commit_size",
    "API writes that shared one database commit",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)

indexer_lag_blocks = Gauge(
    "crm_ledger_indexer_lag_blocks",
    "Confirmed blocks the indexer has not read yet (chain head minus confirmations minus cursor)",
)
indexer_lag_seconds = Gauge(
    "crm_ledger_indexer_lag_seconds",
    "Seconds since the indexer last had read every confirmed block",
)
indexer_events_total = Counter(
    "crm_ledger_indexer_events_total", "Chain events the indexer stored, by event", ["event"]
)
indexer_reorgs_total = Counter(
    "crm_ledger_indexer_reorgs_total", "Reorganisations the indexer rolled back"
)
drift_items = Gauge(
    "crm_ledger_drift_items",
    "Disagreements between the database and the chain in the latest reconciliation, by kind",
    ["kind"],
)
drift_detected_total = Counter(
    "crm_ledger_drift_detected_total",
    "Disagreements found that the previous reconciliation did not have, by kind",
    ["kind"],
)

worker_state = Gauge(
    "crm_ledger_worker_state",
    "1 for the state each background worker is in, 0 for the others",
    ["worker", "state"],
)
worker_items_total = Counter(
    "crm_ledger_worker_items_total", "Items background workers handled, by worker", ["worker"]
)
worker_failures_total = Counter(
    "crm_ledger_worker_failures_total",
    "Steps of background workers that failed and were backed off, by worker",
    ["worker"],
)
