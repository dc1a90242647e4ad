"""The Salesforce sync: which Contacts to send, one Bulk API 2.0 job at a time, durably.

Exports: `SalesforceSync`, `SyncJob`, `JobOutcome`, `SyncSummary`, `JobStage`, `mark_all`,
`mark_changed`, `plan_job`, `sync_from_settings`, `FEED_CURSOR`, `AUDIT_CURSOR` (marking and
planning are `outbound.salesforce.planning`'s, re-exported here).

State lives in three tables (`salesforce_contacts`, `salesforce_jobs`, `salesforce_cursors`):

1. *Mark.* A customer becomes `dirty` when a change-feed event names them (the `feed` cursor
   moves in the same transaction), when a new ledger audit finished (its integrity status may
   have changed: everyone), when the feed was pruned past the cursor (events were missed:
   everyone), or on a full `crm-ledger sync salesforce`.
2. *Plan.* Dirty customers' values are computed and hashed; those equal to what Salesforce last
   accepted are cleaned without sending; the rest, up to the job size limits, become one
   `salesforce_jobs` row holding the exact CSV, committed before anything is sent, and are no
   longer dirty (a change that arrives while the job runs marks them again).
3. *Send.* Create the job (its id is committed: stage `open`), upload, close (stage `uploaded`),
   poll, read the successful and failed results and apply them in one transaction (stage
   `done`). Failed rows keep the last accepted hash and their `sf__Error`; a row refused only
   for the missing `LastName` of a new Contact is sent again with a pseudonymous one.

Killed at any point, the next step resumes the job in flight: a job still `Open` in Salesforce
(the upload may or may not have arrived) is aborted and the same CSV goes in a new job, so no row
is applied twice; a job already closed is polled and its results applied. A job created but
killed before its id was committed stays Open in Salesforce and is never processed (Salesforce
deletes it after 7 days). Upserts by external id make re-applying a row harmless anyway.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.config import Settings
from crm_ledger.db.models import (
    Customer,
    SalesforceContact,
    SalesforceJob,
    utcnow,
)
from crm_ledger.errors import ConfigError, SalesforceError
from crm_ledger.outbound.salesforce.client import BulkClient, JobState, JwtBearerAuth, ResultRow
from crm_ledger.outbound.salesforce.contacts import (
    EXTERNAL_ID_FIELD,
    LAST_NAME_FIELD,
)
from crm_ledger.outbound.salesforce.planning import (
    AUDIT_CURSOR,
    CHUNK,
    FEED_CURSOR,
    JobStage,
    SyncJob,
    mark_all,
    mark_changed,
    plan_job,
)

__all__ = [
    "AUDIT_CURSOR",
    "FEED_CURSOR",
    "JobOutcome",
    "JobStage",
    "SalesforceSync",
    "SyncJob",
    "SyncSummary",
    "mark_all",
    "mark_changed",
    "plan_job",
    "sync_from_settings",
]

log = logging.getLogger(__name__)

#: How many row errors a job outcome keeps for people to read.
_ERRORS_KEPT = 20


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """One finished job: rows sent, created, updated and failed, and the first row errors.

    `to_create` rows were refused only because a new Contact needs a LastName: they go again,
    with the pseudonymous one, in a later job (not failures).
    """

    job_id: str
    records: int
    created: int
    updated: int
    failed: int
    to_create: int
    errors: list[tuple[str, str]]


@dataclass(slots=True)
class SyncSummary:
    """What a full sync did."""

    marked: int = 0
    jobs: int = 0
    sent: int = 0
    created: int = 0
    updated: int = 0
    failed: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)

    def add(self, outcome: JobOutcome) -> None:
        """Count one finished job in (a row sent again to create its Contact counts once)."""
        self.jobs += 1
        self.sent += outcome.records - outcome.to_create
        self.created += outcome.created
        self.updated += outcome.updated
        self.failed += outcome.failed
        self.errors.extend(outcome.errors[: _ERRORS_KEPT - len(self.errors)])


# Send ------------------------------------------------------------------------------------------


def _unfinished(session_factory: sessionmaker[Session]) -> SyncJob | None:
    with session_factory() as session:
        row = session.scalars(
            select(SalesforceJob)
            .where(
                SalesforceJob.state.in_(
                    [JobStage.PLANNED.value, JobStage.OPEN.value, JobStage.UPLOADED.value]
                )
            )
            .order_by(SalesforceJob.pk)
            .limit(1)
        ).first()
        if row is None:
            return None
        return SyncJob(row.pk, row.job_id, JobStage(row.state), row.payload, dict(row.rows))


def _set_stage(
    session_factory: sessionmaker[Session], job: SyncJob, stage: JobStage, job_id: str | None
) -> SyncJob:
    with session_factory.begin() as session:
        session.execute(
            update(SalesforceJob)
            .where(SalesforceJob.pk == job.pk)
            .values(state=stage.value, job_id=job_id)
        )
    return replace(job, stage=stage, job_id=job_id)


def _fail(session_factory: sessionmaker[Session], job: SyncJob, error: str) -> None:
    """The whole job failed in Salesforce: its customers are dirty again."""
    with session_factory.begin() as session:
        session.execute(
            update(SalesforceJob)
            .where(SalesforceJob.pk == job.pk)
            .values(state=JobStage.FAILED.value, error=error, finished_at=utcnow())
        )
        pks = list(session.scalars(select(Customer.pk).where(Customer.id.in_(list(job.rows)))))
        for start in range(0, len(pks), CHUNK):
            session.execute(
                update(SalesforceContact)
                .where(SalesforceContact.customer_pk.in_(pks[start : start + CHUNK]))
                .values(dirty=True)
            )


def _apply(
    session_factory: sessionmaker[Session],
    job: SyncJob,
    successes: list[ResultRow],
    failures: list[ResultRow],
    processed: int,
) -> JobOutcome:
    """Record what Salesforce did with each row of the job, and finish it, in one transaction."""
    assert job.job_id is not None
    now = utcnow()
    with session_factory.begin() as session:
        ids = list(job.rows)
        pk_of = _pks_of(session, ids)
        updates: list[dict[str, Any]] = []
        seen: set[str] = set()
        created = 0
        for row in successes:
            customer_id = row.fields.get(EXTERNAL_ID_FIELD, "")
            if customer_id not in job.rows or customer_id not in pk_of:
                continue
            seen.add(customer_id)
            created += row.created
            updates.append(
                {
                    "customer_pk": pk_of[customer_id],
                    "synced_hash": bytes.fromhex(job.rows[customer_id]),
                    "salesforce_id": row.salesforce_id,
                    "needs_create": False,
                    "last_error": None,
                    "synced_at": now,
                }
            )
        errors, to_create = _failed_rows(job, failures, pk_of, seen, updates)
        # Rows Salesforce did not process: send them again.
        updates.extend(
            {"customer_pk": pk_of[customer_id], "dirty": True}
            for customer_id in ids
            if customer_id not in seen and customer_id in pk_of
        )
        for keys in {tuple(sorted(u)) for u in updates}:
            same = [u for u in updates if tuple(sorted(u)) == keys]
            session.execute(update(SalesforceContact), same)
        session.execute(
            update(SalesforceJob)
            .where(SalesforceJob.pk == job.pk)
            .values(
                state=JobStage.DONE.value,
                processed=processed,
                failed=len(failures),
                finished_at=now,
            )
        )
    succeeded = len(successes)
    return JobOutcome(
        job_id=job.job_id,
        records=len(job.rows),
        created=created,
        updated=succeeded - created,
        failed=len(failures) - to_create,
        to_create=to_create,
        errors=errors,
    )


def _pks_of(session: Session, ids: list[str]) -> dict[str, int]:
    """Customer id -> pk, for the ids that exist."""
    pk_of: dict[str, int] = {}
    for start in range(0, len(ids), CHUNK):
        pk_of.update(
            session.execute(
                select(Customer.id, Customer.pk).where(Customer.id.in_(ids[start : start + CHUNK]))
            )
            .tuples()
            .all()
        )
    return pk_of


def _failed_rows(
    job: SyncJob,
    failures: list[ResultRow],
    pk_of: dict[str, int],
    seen: set[str],
    updates: list[dict[str, Any]],
) -> tuple[list[tuple[str, str]], int]:
    """Add the failed rows' updates (a new Contact refused for its missing LastName only is
    sent again with a pseudonymous one); the errors kept for people, and how many those are."""
    errors: list[tuple[str, str]] = []
    to_create = 0
    for row in failures:
        customer_id = row.fields.get(EXTERNAL_ID_FIELD, "")
        if customer_id not in job.rows or customer_id not in pk_of:
            continue
        seen.add(customer_id)
        error = row.error or "no sf__Error given"
        values: dict[str, Any] = {"customer_pk": pk_of[customer_id], "last_error": error}
        if error.startswith("REQUIRED_FIELD_MISSING") and LAST_NAME_FIELD in error:
            to_create += 1
            values |= {"needs_create": True, "dirty": True}
        elif len(errors) < _ERRORS_KEPT:
            errors.append((customer_id, error))
        updates.append(values)
    return errors, to_create


class SalesforceSync:
    """The `salesforce` worker: mark from the change feed, plan one job, send it, apply results.

    `step()` resumes the job in flight first; it waits for a job at most `max_wait_seconds`
    (polling every `poll_seconds`) and otherwise returns, to poll again on the next step.
    """

    name = "salesforce"

    def __init__(
        self,
        *,
        session_factory: sessionmaker[Session],
        client: BulkClient,
        object_name: str = "Contact",
        max_bytes: int = 100_000_000,
        max_records: int = 10_000,
        poll_seconds: float = 2.0,
        max_wait_seconds: float = 30.0,
        on_job: Callable[[JobOutcome], None] | None = None,
    ) -> None:
        self.session_factory = session_factory
        self.client = client
        self.object_name = object_name
        self.max_bytes = max_bytes
        self.max_records = max_records
        self.poll_seconds = poll_seconds
        self.max_wait_seconds = max_wait_seconds
        self.on_job = on_job

    async def step(self) -> int:
        """One unit of work: resume or send one job, after marking from the feed; items handled."""
        job = await asyncio.to_thread(_unfinished, self.session_factory)
        if job is not None:
            outcome = await self._advance(job, resumed=True)
            return outcome.records if outcome is not None else 0
        marked = await asyncio.to_thread(mark_changed, self.session_factory)
        return marked + await self._send_next()

    async def drain(self) -> SyncSummary:
        """Send every dirty customer, job after job, waiting for each (the one-shot sync)."""
        summary = SyncSummary()
        max_wait, self.max_wait_seconds = self.max_wait_seconds, float("inf")
        on_job = self.on_job

        def count(outcome: JobOutcome) -> None:
            summary.add(outcome)
            if on_job is not None:
                on_job(outcome)

        self.on_job = count
        try:
            job = await asyncio.to_thread(_unfinished, self.session_factory)
            if job is not None:
                await self._advance(job, resumed=True)
            while await self._send_next():
                pass
        finally:
            self.max_wait_seconds, self.on_job = max_wait, on_job
        return summary

    async def _send_next(self) -> int:
        job, unchanged = await asyncio.to_thread(
            plan_job,
            self.session_factory,
            object_name=self.object_name,
            max_bytes=self.max_bytes,
            max_records=self.max_records,
        )
        if job is None:
            return unchanged
        log.info("salesforce job planned: %d rows (%d unchanged)", len(job.rows), unchanged)
        outcome = await self._advance(job, resumed=False)
        return unchanged + (outcome.records if outcome is not None else len(job.rows))

    async def _advance(self, job: SyncJob, *, resumed: bool) -> JobOutcome | None:
        while True:
            if job.stage is JobStage.PLANNED or job.job_id is None:
                job_id = await self.client.create_upsert_job(
                    object_name=self.object_name, external_id_field=EXTERNAL_ID_FIELD
                )
                job = await asyncio.to_thread(
                    _set_stage, self.session_factory, job, JobStage.OPEN, job_id
                )
                resumed = False
            else:
                job_id = job.job_id
            if job.stage is JobStage.OPEN and not resumed:
                await self.client.upload(job_id, job.payload.encode("utf-8"))
                await self.client.close(job_id)
                job = await asyncio.to_thread(
                    _set_stage, self.session_factory, job, JobStage.UPLOADED, job_id
                )
            elif job.stage is JobStage.OPEN:
                info = await self.client.job_info(job_id)
                if info.state in (JobState.OPEN, JobState.ABORTED):
                    # Killed before the close: the upload may be there or not. Start over.
                    if info.state is JobState.OPEN:
                        await self.client.abort(job_id)
                    log.info("salesforce job %s was left open: aborted, sending again", job_id)
                    job = await asyncio.to_thread(
                        _set_stage, self.session_factory, job, JobStage.PLANNED, None
                    )
                    continue
                job = await asyncio.to_thread(
                    _set_stage, self.session_factory, job, JobStage.UPLOADED, job_id
                )
            return await self._finish(job, job_id)

    async def _finish(self, job: SyncJob, job_id: str) -> JobOutcome | None:
        deadline = time.monotonic() + self.max_wait_seconds
        while True:
            info = await self.client.job_info(job_id)
            if info.state is JobState.JOB_COMPLETE:
                successes = await self.client.successful_results(job_id)
                failures = await self.client.failed_results(job_id)
                outcome = await asyncio.to_thread(
                    _apply, self.session_factory, job, successes, failures, info.processed
                )
                log.info(
                    "salesforce job %s done: %d rows, %d created, %d updated, %d failed, "
                    "%d to create with a LastName",
                    outcome.job_id,
                    outcome.records,
                    outcome.created,
                    outcome.updated,
                    outcome.failed,
                    outcome.to_create,
                )
                if self.on_job is not None:
                    self.on_job(outcome)
                return outcome
            if info.state in (JobState.FAILED, JobState.ABORTED):
                message = info.error_message or f"the job was {info.state.value}"
                await asyncio.to_thread(_fail, self.session_factory, job, message)
                raise SalesforceError(
                    f"Salesforce job {job_id} {info.state.value}: {message}; its "
                    f"{len(job.rows)} rows will be sent again"
                )
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(self.poll_seconds)


def sync_from_settings(
    *,
    settings: Settings,
    session_factory: sessionmaker[Session],
    http: httpx.AsyncClient,
    **overrides: Any,
) -> SalesforceSync:
    """A sync configured by the CRM_LEDGER_SALESFORCE_* settings; raises `ConfigError`."""
    missing = [
        f"CRM_LEDGER_SALESFORCE_{name.upper()}"
        for name in ("client_id", "username", "private_key_path")
        if getattr(settings, f"salesforce_{name}") is None
    ]
    if missing:
        raise ConfigError(
            f"the Salesforce sync needs {', '.join(missing)} (see docs/salesforce.md: the "
            "connected app's consumer key, the integration user, the PEM key of its certificate)"
        )
    assert settings.salesforce_private_key_path is not None
    try:
        key = settings.salesforce_private_key_path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read CRM_LEDGER_SALESFORCE_PRIVATE_KEY_PATH "
            f"{settings.salesforce_private_key_path}: {exc.strerror}"
        ) from None
    assert settings.salesforce_client_id is not None and settings.salesforce_username is not None
    auth = JwtBearerAuth(
        http=http,
        login_url=settings.salesforce_login_url,
        client_id=settings.salesforce_client_id,
        username=settings.salesforce_username,
        private_key_pem=key,
    )
    values: dict[str, Any] = {
        "object_name": settings.salesforce_object,
        "max_bytes": settings.salesforce_job_max_bytes,
        "max_records": settings.salesforce_job_max_records,
        "poll_seconds": settings.salesforce_poll_seconds,
    }
    values.update(overrides)
    return SalesforceSync(
        session_factory=session_factory,
        client=BulkClient(http=http, auth=auth, api_version=settings.salesforce_api_version),
        **values,
    )
