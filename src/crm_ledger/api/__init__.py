"""The REST API: routes, auth, idempotency, problem details, limits and metrics.

Exports: `install`, `BATCH_BODY_FACTOR`.
"""

from __future__ import annotations

from fastapi import FastAPI

from crm_ledger.api import docs
from crm_ledger.api.deps import ApiKeyCache
from crm_ledger.api.middleware import (
    BodyLimitMiddleware,
    MetricsMiddleware,
    RequestLogMiddleware,
    UnexpectedErrorMiddleware,
)
from crm_ledger.api.path_ids import check_ids_of
from crm_ledger.api.problems import document_unavailable, install_problem_handlers
from crm_ledger.api.ratelimit import RateLimiter
from crm_ledger.api.routes import (
    audit,
    crm,
    customers,
    events,
    health,
    loyalty,
    ops,
    records,
    webhook_subscriptions,
)
from crm_ledger.api.routes import sources as ingest_sources
from crm_ledger.api.routes import webhooks as ingest_webhooks
from crm_ledger.config import Settings
from crm_ledger.console import install_console
from crm_ledger.journal.keys import KeysChangedMark

# A batch of interactions carries up to `max_batch_items` items; at ~100 bytes for the smallest
# item a thousand of them do not fit in the single-request limit, so the batch endpoint gets
# this many times the limit (1 MiB by default).
BATCH_BODY_FACTOR = 16


def install(app: FastAPI) -> None:
    """Add routes, error handlers and middleware to `app` (its runtime must be set already)."""
    settings: Settings = app.state.runtime.settings
    app.state.api_key_cache = ApiKeyCache(changes=KeysChangedMark(settings.data_dir))
    app.state.rate_limiter = RateLimiter.from_settings(settings)
    install_problem_handlers(app)
    # The routers whose paths hold the service's ids: a non-UUID id there is a clear 422.
    app.include_router(check_ids_of(customers.router))
    app.include_router(check_ids_of(records.router))
    app.include_router(health.router)
    app.include_router(check_ids_of(audit.router))
    app.include_router(check_ids_of(loyalty.router))
    app.include_router(check_ids_of(crm.router))
    app.include_router(events.router)
    # Commerce ingest (issue 11).
    app.include_router(ingest_sources.router)
    app.include_router(ingest_webhooks.router)
    # Web console (issue 13): /v1/me, /v1/ops, and the console itself at /.
    app.include_router(check_ids_of(ops.router))
    install_console(app)
    app.include_router(webhook_subscriptions.router)
    docs.install(app)
    # Every /v1 operation can answer 503 while the database is down (after every router).
    document_unavailable(app)
    # Added innermost first: metrics see every answer, including the last-resort 500.
    app.add_middleware(
        BodyLimitMiddleware,
        limit=settings.max_body_bytes,
        path_limits={
            "/v1/interactions/batch": settings.max_body_bytes * BATCH_BODY_FACTOR,
            # 10,000 customer ids (~390 KB) in one award.
            "/v1/campaigns/{campaign_id}/awards": settings.max_body_bytes * BATCH_BODY_FACTOR,
            # Shop orders with many lines are larger than a REST write.
            ingest_webhooks.WEBHOOK_PATH: settings.max_webhook_body_bytes,
        },
    )
    app.add_middleware(UnexpectedErrorMiddleware)
    app.add_middleware(MetricsMiddleware)
    # Outermost: the request id covers every line logged while answering, the 500s included.
    app.add_middleware(RequestLogMiddleware)
