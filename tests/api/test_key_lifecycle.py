"""API keys over time (issue 10, part 5): expiry, rotation with an overlap, revocation that
takes effect at once although the key is cached, and per-key rate limits answering 429."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.api.ratelimit import RateLimiter
from crm_ledger.app import create_app
from crm_ledger.config import Settings
from crm_ledger.db.models import ApiKey, utcnow
from crm_ledger.errors import TooManyRequests
from crm_ledger.journal.keys import (
    ApiKeyPrincipal,
    Role,
    create_api_key,
    list_api_keys,
    mark_keys_changed,
    revoke_api_key,
    rotate_api_key,
)
from tests.api.helpers import problem
from tests.apps import TestClient


def bearer(key: str) -> dict[str, str]:
    """Authorization headers for `key`."""
    return {"Authorization": f"Bearer {key}"}


def key_id(session_factory: sessionmaker[Session], label: str) -> str:
    """The id of the key labelled `label`."""
    with session_factory() as session:
        return next(k.id for k in list_api_keys(session) if k.label == label)


def test_an_expired_key_is_401_saying_it_expired(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    # Three seconds: long enough that a loaded machine still makes the first request in time.
    made = time.monotonic()
    with session_factory.begin() as session:
        key = create_api_key(
            session, role=Role.RECORDER, label="short", expires_in=timedelta(seconds=3)
        )
    assert client.get("/v1/customers", headers=bearer(key)).status_code == 200
    time.sleep(max(0.0, made + 3.1 - time.monotonic()))

    # The key is in the cache by now: the expiry is checked on every request all the same.
    found = problem(client.get("/v1/customers", headers=bearer(key)), 401)

    assert "expired at" in found["detail"]
    assert key_id(session_factory, "short") in found["detail"]


def test_a_rotated_key_works_beside_the_new_one_until_the_overlap_ends(
    client: TestClient, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    with session_factory.begin() as session:
        old = create_api_key(session, role=Role.AUDITOR, label="old")
    assert client.get("/v1/customers", headers=bearer(old)).status_code == 200

    with session_factory.begin() as session:
        new, new_info, old_info = rotate_api_key(
            session, key_id=key_id(session_factory, "old"), overlap=timedelta(hours=1)
        )
    mark_keys_changed(tmp_path)

    assert new_info.role == "auditor" and old_info.expires_at is not None
    assert client.get("/v1/customers", headers=bearer(old)).status_code == 200
    assert client.get("/v1/customers", headers=bearer(new)).status_code == 200
    # A write keeps its role: an auditor may not create customers with either key.
    problem(client.post("/v1/customers", json={}, headers=bearer(new)), 403)

    with session_factory.begin() as session:
        rotate_api_key(session, key_id=key_id(session_factory, "old"), overlap=timedelta(0))
    mark_keys_changed(tmp_path)

    assert "expired" in problem(client.get("/v1/customers", headers=bearer(old)), 401)["detail"]
    assert client.get("/v1/customers", headers=bearer(new)).status_code == 200


def test_a_revocation_takes_effect_at_once_in_a_process_that_cached_the_key(
    client: TestClient, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    with session_factory.begin() as session:
        key = create_api_key(session, role=Role.RECORDER, label="leaving")
    assert client.get("/v1/customers", headers=bearer(key)).status_code == 200

    with session_factory.begin() as session:
        revoke_api_key(session, key_id=key_id(session_factory, "leaving"))
    mark_keys_changed(tmp_path)  # what `crm-ledger keys revoke` does after its commit

    problem(client.get("/v1/customers", headers=bearer(key)), 401)


def test_an_expiry_set_in_the_database_is_seen_after_the_change_mark(
    client: TestClient, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    with session_factory.begin() as session:
        key = create_api_key(session, role=Role.RECORDER, label="cut short")
    assert client.get("/v1/customers", headers=bearer(key)).status_code == 200
    with session_factory.begin() as session:
        session.execute(
            update(ApiKey)
            .where(ApiKey.label == "cut short")
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )

    mark_keys_changed(tmp_path)

    problem(client.get("/v1/customers", headers=bearer(key)), 401)


# Rate limits --------------------------------------------------------------------------------


@pytest.fixture
def limited_client(settings: Settings) -> Iterator[TestClient]:
    """An app whose recorder keys may send 1 request a second, bursting 3."""
    limited = settings.model_copy(
        update={"rate_limit_recorder": 1.0, "rate_limit_burst_seconds": 3.0}
    )
    app: FastAPI = create_app(limited, background=False)
    with TestClient(app) as client:
        yield client
    app.state.runtime.engine.dispose()


def test_a_key_over_its_rate_gets_429_with_retry_after(
    limited_client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    with session_factory.begin() as session:
        busy = create_api_key(session, role=Role.RECORDER, label="busy")
        other = create_api_key(session, role=Role.RECORDER, label="other")
        auditor = create_api_key(session, role=Role.AUDITOR, label="auditor")

    answers = [limited_client.get("/v1/customers", headers=bearer(busy)) for _ in range(4)]

    assert [a.status_code for a in answers[:3]] == [200, 200, 200]
    found = problem(answers[3], 429)
    assert 1 <= int(answers[3].headers["retry-after"]) <= 1
    assert found["retry_after"] == int(answers[3].headers["retry-after"])
    assert "CRM_LEDGER_RATE_LIMIT_RECORDER" in found["detail"]
    # Per key, per role: another recorder key and an auditor key are not held back.
    assert limited_client.get("/v1/customers", headers=bearer(other)).status_code == 200
    assert limited_client.get("/v1/customers", headers=bearer(auditor)).status_code == 200


def test_a_limited_write_writes_nothing(
    limited_client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    with session_factory.begin() as session:
        key = create_api_key(session, role=Role.RECORDER, label="writer")
    bodies = [{"name": f"C{i}", "email": f"c{i}@example.com"} for i in range(4)]

    answers = [limited_client.post("/v1/customers", json=b, headers=bearer(key)) for b in bodies]

    assert [a.status_code for a in answers] == [201, 201, 201, 429]
    listed = limited_client.get("/v1/customers", headers=bearer(create_key(session_factory)))
    assert "c3@example.com" not in listed.text


def create_key(session_factory: sessionmaker[Session]) -> str:
    """A fresh admin key."""
    with session_factory.begin() as session:
        return create_api_key(session, role=Role.ADMIN)


class FakeClock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_bucket_refills_at_the_rate_and_caps_at_the_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rates={Role.RECORDER: 2.0}, burst_seconds=2.0, clock=clock)
    key = ApiKeyPrincipal(pk=1, id="k", role=Role.RECORDER)

    for _ in range(4):
        limiter.take(key)
    with pytest.raises(TooManyRequests) as caught:
        limiter.take(key)
    assert caught.value.retry_after == 1

    clock.now += 0.5  # one token back
    limiter.take(key)
    with pytest.raises(TooManyRequests):
        limiter.take(key)

    clock.now += 3600  # full again, not more than the burst
    for _ in range(4):
        limiter.take(key)
    with pytest.raises(TooManyRequests):
        limiter.take(key)


def test_a_rate_of_zero_means_no_limit() -> None:
    limiter = RateLimiter(rates={Role.ADMIN: 0.0}, burst_seconds=1.0, clock=FakeClock())
    key = ApiKeyPrincipal(pk=1, id="k", role=Role.ADMIN)

    for _ in range(10_000):
        limiter.take(key)
