"""The Salesforce sync against the Bulk API 2.0 stand-in on 127.0.0.1, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger import feed
from crm_ledger.db.models import (
    AuditReport,
    Customer,
    FeedEvent,
    FeedMark,
    SalesforceContact,
    SalesforceJob,
)
from crm_ledger.errors import SalesforceError, SalesforceUnavailable
from crm_ledger.outbound.salesforce import sync as sync_module
from crm_ledger.outbound.salesforce.contacts import placeholder_last_name
from crm_ledger.outbound.salesforce.standin import SalesforceStandIn, StoredContact
from crm_ledger.outbound.salesforce.sync import JobStage, mark_all
from tests.outbound.salesforce.conftest import (
    KeyPair,
    add_customers,
    add_interactions,
    add_points,
    free_port,
    make_sync,
    run_steps,
)

pytestmark = pytest.mark.asyncio


def _rows(payload: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(payload)))


def _jobs(session_factory: sessionmaker[Session]) -> list[SalesforceJob]:
    with session_factory() as session:
        return list(session.scalars(select(SalesforceJob).order_by(SalesforceJob.pk)))


async def test_ten_thousand_contacts_in_jobs_under_the_upload_limit(
    session_factory: sessionmaker[Session],
    http: httpx.AsyncClient,
    key_pair: KeyPair,
    standin: SalesforceStandIn,
) -> None:
    ids = add_customers(session_factory, 10_000)
    at = datetime(2026, 12, 1, 9, 30, 15, 250_000, tzinfo=UTC)
    add_interactions(session_factory, ids[:4000], at)
    add_points(session_factory, {customer_id: 10 + n for n, customer_id in enumerate(ids[:3000])})
    # Half the Contacts already exist in the org, linked by the external id, with real names.
    for n, customer_id in enumerate(ids[5000:]):
        standin.contacts[customer_id] = StoredContact(
            id=f"003EXISTING{n:07d}", fields={"LastName": "Existing", "Email": "kept@org"}
        )
    limit = 120_000
    standin.max_upload_bytes = limit
    sync = make_sync(session_factory, http, key_pair, standin, max_bytes=limit)

    assert mark_all(session_factory) == 10_000
    summary = await sync.drain()

    assert len(standin.contacts) == 10_000
    assert summary.failed == 0 and summary.errors == []
    assert summary.created == 5000 and summary.updated == 5000
    for n, customer_id in enumerate(ids):
        contact = standin.contacts[customer_id]
        assert contact.writes == 1, "every Contact is written exactly once"
        assert contact.fields["Loyalty_Balance__c"] == (str(10 + n) if n < 3000 else "0")
        expected_last = "2026-12-01T09:30:15.250Z" if n < 4000 else None
        assert contact.fields["Last_Interaction__c"] == expected_last
        assert contact.fields["Ledger_Integrity__c"] == "never_audited"
        expected_name = "Existing" if n >= 5000 else placeholder_last_name(customer_id)
        assert contact.fields["LastName"] == expected_name
    # Jobs of the size limit: every upload fits, and each job but the last of a pass is full
    # (the next row would not have fit). First pass: every Contact; second: the new ones, with
    # a LastName.
    jobs = _jobs(session_factory)
    assert all(job.state == JobStage.DONE.value for job in jobs)
    longest_row = max(len(line) + 1 for job in jobs for line in job.payload.splitlines()[1:])
    for second_pass in (False, True):
        sizes = [
            len(job.payload.encode())
            for job in jobs
            if ("LastName" in job.payload.partition("\n")[0]) is second_pass
        ]
        assert sizes and all(size <= limit for size in sizes)
        assert all(size > limit - longest_row for size in sizes[:-1])
    assert len(jobs) >= 3
    sent = sum(rows for _, rows in standin.uploads)
    assert sent == 10_000 + 5000, "each Contact once, the 5,000 new ones again with a LastName"
    # Nothing personal left the ledger.
    for job in jobs:
        assert "Planted" not in job.payload and "@example.com" not in job.payload


async def test_per_row_failures_are_reported_and_kept(
    session_factory: sessionmaker[Session],
    http: httpx.AsyncClient,
    key_pair: KeyPair,
    standin: SalesforceStandIn,
) -> None:
    ids = add_customers(session_factory, 20)
    for customer_id in ids:
        standin.contacts[customer_id] = StoredContact(id="003X", fields={"LastName": "X"})
    refused = ids[3:6]
    for customer_id in refused:
        standin.rejections[customer_id] = (
            "FIELD_CUSTOM_VALIDATION_EXCEPTION:Loyalty balance is locked:Loyalty_Balance__c --"
        )
    sync = make_sync(session_factory, http, key_pair, standin)
    mark_all(session_factory)

    summary = await sync.drain()

    assert summary.sent == 20 and summary.updated == 17 and summary.failed == 3
    assert sorted(customer_id for customer_id, _ in summary.errors) == sorted(refused)
    assert all("FIELD_CUSTOM_VALIDATION_EXCEPTION" in error for _, error in summary.errors)
    with session_factory() as session:
        states = {
            customer_id: state
            for customer_id, state in session.execute(
                select(Customer.id, SalesforceContact).join(
                    SalesforceContact, SalesforceContact.customer_pk == Customer.pk
                )
            )
            .tuples()
            .all()
        }
    for customer_id in ids:
        state = states[customer_id]
        if customer_id in refused:
            assert state.synced_hash is None and state.last_error is not None
            assert "Loyalty balance is locked" in state.last_error
        else:
            assert state.synced_hash is not None and state.last_error is None
        assert not state.dirty
    job = _jobs(session_factory)[0]
    assert job.failed == 3 and job.processed == 20

    # Once Salesforce accepts them, a full sync sends only the three that failed.
    standin.rejections.clear()
    uploads = len(standin.uploads)
    mark_all(session_factory)
    summary = await sync.drain()
    assert summary.sent == 3 and summary.failed == 0
    assert [rows for _, rows in standin.uploads[uploads:]] == [3]


async def test_a_rerun_sends_only_what_changed(
    session_factory: sessionmaker[Session],
    http: httpx.AsyncClient,
    key_pair: KeyPair,
    standin: SalesforceStandIn,
) -> None:
    ids = add_customers(session_factory, 50)
    sync = make_sync(session_factory, http, key_pair, standin)
    # The worker's first step compares everyone.
    assert await run_steps(sync) > 0
    assert len(standin.contacts) == 50
    uploads = len(standin.uploads)

    # Nothing changed: a full sync and the worker send nothing.
    mark_all(session_factory)
    assert (await sync.drain()).sent == 0
    assert await run_steps(sync) == 0
    assert len(standin.uploads) == uploads

    # Two customers change; the feed names them and three others whose fields did not change.
    add_interactions(session_factory, [ids[7]], datetime(2026, 12, 2, tzinfo=UTC))
    add_points(session_factory, {ids[9]: 40})
    with session_factory.begin() as session:
        feed.append(
            session,
            [
                feed.NewFeedEvent(
                    type=feed.EventType.RECORD_ANCHORED, payload={}, customer_id=customer_id
                )
                for customer_id in (ids[7], ids[9], ids[1], ids[2], ids[3])
            ],
        )
    await run_steps(sync)
    changed = standin.uploads[uploads:]
    assert [rows for _, rows in changed] == [2]
    assert standin.contacts[ids[7]].fields["Last_Interaction__c"] == "2026-12-02T00:00:00.000Z"
    assert standin.contacts[ids[9]].fields["Loyalty_Balance__c"] == "40"
    assert standin.contacts[ids[1]].writes == 1

    # A finished ledger audit changes everyone's integrity status: everyone is sent once.
    with session_factory.begin() as session:
        session.add(AuditReport(status="done", clean=True, finished_at=datetime.now(UTC)))
    await run_steps(sync)
    assert sum(rows for _, rows in standin.uploads[uploads + 1 :]) == 50
    assert {c.fields["Ledger_Integrity__c"] for c in standin.contacts.values()} == {"clean"}


async def test_salesforce_down_raises_unavailable_and_loses_nothing(
    session_factory: sessionmaker[Session],
    http: httpx.AsyncClient,
    key_pair: KeyPair,
    standin: SalesforceStandIn,
) -> None:
    ids = add_customers(session_factory, 30)
    # Nothing listens at this login URL: connection refused.
    nowhere = make_sync(
        session_factory, http, key_pair, standin, login_url=f"http://127.0.0.1:{free_port()}"
    )
    with pytest.raises(SalesforceUnavailable, match="cannot reach the Salesforce login host"):
        await nowhere.step()

    # Up for the login, then answering 503 in the middle of the job.
    sync = make_sync(session_factory, http, key_pair, standin)
    original_upload = sync.client.upload

    async def upload_then_go_down(job_id: str, data: bytes) -> None:
        await original_upload(job_id, data)
        standin.available = False

    sync.client.upload = upload_then_go_down  # type: ignore[method-assign]
    with pytest.raises(SalesforceUnavailable, match="503"):
        await sync.step()
    with pytest.raises(SalesforceUnavailable):
        await sync.step()
    assert [job.state for job in _jobs(session_factory)] == [JobStage.OPEN.value]

    standin.available = True
    fresh = make_sync(session_factory, http, key_pair, standin)
    await run_steps(fresh)
    assert sorted(standin.contacts) == sorted(ids)
    assert all(contact.writes == 1 for contact in standin.contacts.values())
    states = [job.state for job in _jobs(session_factory)]
    assert JobStage.DONE.value in states and JobStage.OPEN.value not in states


@pytest.mark.parametrize("killed_after", ["create", "upload", "close", "results"])
async def test_killed_mid_job_resumes_without_losing_or_applying_twice(
    killed_after: str,
    session_factory: sessionmaker[Session],
    http: httpx.AsyncClient,
    key_pair: KeyPair,
    standin: SalesforceStandIn,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = add_customers(session_factory, 40)
    for customer_id in ids:
        standin.contacts[customer_id] = StoredContact(id="003X", fields={"LastName": "X"})
    add_points(session_factory, {customer_id: 5 for customer_id in ids})
    standin.polls_before_complete = 0
    doomed = make_sync(session_factory, http, key_pair, standin)

    class Killed(BaseException):
        """The process dying: nothing after this point runs."""

    if killed_after == "results":

        def apply_then_die(*args: object, **kwargs: object) -> None:
            raise Killed

        monkeypatch.setattr(sync_module, "_apply", apply_then_die)
    else:
        name = {"create": "create_upsert_job", "upload": "upload", "close": "close"}[killed_after]
        real = getattr(doomed.client, name)

        async def call_then_die(*args: object, **kwargs: object) -> object:
            await real(*args, **kwargs)
            raise Killed

        setattr(doomed.client, name, call_then_die)
    with pytest.raises(Killed):
        await doomed.step()
    monkeypatch.undo()

    resumed = make_sync(session_factory, http, key_pair, standin)
    await run_steps(resumed)

    assert all(standin.contacts[c].fields.get("Loyalty_Balance__c") == "5" for c in ids)
    assert all(standin.contacts[c].writes == 1 for c in ids), "no row applied twice"
    completed = [job for job in standin.jobs.values() if job.state == "JobComplete"]
    assert len(completed) == 1
    assert sum(job.processed for job in standin.jobs.values()) == 40
    with session_factory() as session:
        states = list(session.scalars(select(SalesforceContact)))
    assert len(states) == 40 and all(s.synced_hash is not None and not s.dirty for s in states)


async def test_a_failed_job_is_reported_and_its_rows_stay_due(
    session_factory: sessionmaker[Session],
    http: httpx.AsyncClient,
    key_pair: KeyPair,
    standin: SalesforceStandIn,
) -> None:
    add_customers(session_factory, 5)
    # The org lacks one of the custom fields: Salesforce fails the whole job.
    standin.fields = standin.fields - {"Ledger_Integrity__c"}
    sync = make_sync(session_factory, http, key_pair, standin)
    with pytest.raises(SalesforceError, match="Field name not found : Ledger_Integrity__c"):
        await sync.step()
    assert [job.state for job in _jobs(session_factory)] == [JobStage.FAILED.value]
    with session_factory() as session:
        assert all(s.dirty for s in session.scalars(select(SalesforceContact)))
    standin.fields = standin.fields | {"Ledger_Integrity__c"}
    await run_steps(sync)
    assert len(standin.contacts) == 5


async def test_an_expired_session_logs_in_again_and_a_bad_key_is_refused(
    session_factory: sessionmaker[Session],
    http: httpx.AsyncClient,
    key_pair: KeyPair,
    standin: SalesforceStandIn,
) -> None:
    ids = add_customers(session_factory, 3)
    sync = make_sync(session_factory, http, key_pair, standin)
    await run_steps(sync)
    assert len(standin.tokens) == 1
    standin.expire_tokens()
    add_interactions(session_factory, ids[:1], datetime(2026, 12, 3, tzinfo=UTC))
    mark_all(session_factory)
    summary = await sync.drain()
    assert summary.sent == 1 and summary.failed == 0
    assert len(standin.tokens) == 1, "logged in again once, transparently"

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    stranger = make_sync(session_factory, http, key_pair, standin, private_key_pem=other)
    add_interactions(session_factory, ids[1:2], datetime(2026, 12, 3, tzinfo=UTC))
    mark_all(session_factory)
    with pytest.raises(SalesforceError, match="invalid_grant") as refused:
        await stranger.step()
    assert "Bearer" not in str(refused.value)


async def test_the_assertion_carries_the_documented_claims(key_pair: KeyPair) -> None:
    import jwt

    from tests.outbound.salesforce.conftest import CLIENT_ID, USERNAME, bulk_client

    async with httpx.AsyncClient() as client:
        bulk = bulk_client(client, key_pair, "https://login.salesforce.com")
        token = bulk.auth.assertion()
    claims = jwt.decode(
        token, key_pair.public_pem, algorithms=["RS256"], audience="https://login.salesforce.com"
    )
    assert claims["iss"] == CLIENT_ID and claims["sub"] == USERNAME
    now = datetime.now(UTC).timestamp()
    assert now < claims["exp"] <= now + timedelta(minutes=3).total_seconds()


async def test_a_feed_pruned_past_the_cursor_makes_everyone_due(
    session_factory: sessionmaker[Session],
    http: httpx.AsyncClient,
    key_pair: KeyPair,
    standin: SalesforceStandIn,
) -> None:
    ids = add_customers(session_factory, 6)
    sync = make_sync(session_factory, http, key_pair, standin)
    await run_steps(sync)
    # Salesforce's copy drifts (someone edited it), then the feed loses events we never read.
    for customer_id in ids:
        standin.contacts[customer_id].fields["Loyalty_Balance__c"] = "999"
    add_points(session_factory, {ids[0]: 3})
    with session_factory.begin() as session:
        feed.append(
            session,
            [feed.NewFeedEvent(type=feed.EventType.REWARD_ISSUED, payload={}, customer_id=ids[0])],
        )
    with session_factory() as session:
        newest = session.scalar(select(func.max(FeedEvent.pk)))
    with session_factory.begin() as session:
        session.add(FeedMark(name="pruned_through", position=int(newest or 0)))
    await run_steps(sync)
    # Everyone was compared; only the customer whose ledger values changed was sent.
    assert standin.contacts[ids[0]].fields["Loyalty_Balance__c"] == "3"
    assert [rows for _, rows in standin.uploads[-1:]] == [1]
    with session_factory() as session:
        assert not any(s.dirty for s in session.scalars(select(SalesforceContact)))
