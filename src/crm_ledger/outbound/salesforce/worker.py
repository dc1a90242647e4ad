"""The `salesforce` background worker: `SalesforceSync` under the supervisor.

Exports: `SalesforceSyncWorker`.

Enabled by `CRM_LEDGER_RUN_SALESFORCE_SYNC=true`. `prepare()` reads the settings and logs in
(a missing setting halts the worker with a message naming it; Salesforce down is backed off);
each `step()` marks the customers the new change-feed events name and sends one job
(`crm_ledger.outbound.salesforce.sync`).
"""

from __future__ import annotations

import httpx
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.config import Settings
from crm_ledger.outbound.salesforce.sync import SalesforceSync, sync_from_settings

__all__ = ["SalesforceSyncWorker"]


class SalesforceSyncWorker:
    """Keeps Contacts current from the change feed; a singleton per journal."""

    name = "salesforce"

    def __init__(self, *, settings: Settings, session_factory: sessionmaker[Session]) -> None:
        self._settings = settings
        self._session_factory = session_factory
        self._http: httpx.AsyncClient | None = None
        self._sync: SalesforceSync | None = None

    async def prepare(self) -> None:
        """Read the Salesforce settings and log in."""
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self._settings.salesforce_timeout_seconds)
        self._sync = sync_from_settings(
            settings=self._settings, session_factory=self._session_factory, http=self._http
        )
        await self._sync.client.auth.token()

    async def step(self) -> int:
        """Mark from the feed, send or resume one job; rows and events handled."""
        assert self._sync is not None, "prepare() first"
        return await self._sync.step()

    async def close(self) -> None:
        """Close the HTTP connections."""
        if self._http is not None:
            await self._http.aclose()
            self._http = None
