"""Bearer API keys: 401 for missing, malformed, unknown or revoked keys; the lookup cache."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.api.deps import key_cache
from crm_ledger.db.models import ApiKey, Customer
from crm_ledger.errors import NotFound
from crm_ledger.journal.keys import (
    Role,
    create_api_key,
    hash_api_key,
    list_api_keys,
    lookup,
    revoke_api_key,
)
from tests.api.helpers import count, problem

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

NEW_CUSTOMER = {"name": "Ada", "email": "ada@example.com"}


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "Bearer not-a-crm-ledger-key",
        "Bearer crml_" + "A" * 43,
        "Bearer crml_" + "A" * 200,
    ],
)
def test_missing_or_bad_keys_are_401_with_a_challenge(
    client: TestClient, session_factory: sessionmaker[Session], authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    for response in (
        client.post("/v1/customers", json=NEW_CUSTOMER, headers=headers),
        client.get("/v1/customers", headers=headers),
    ):
        problem(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert count(session_factory, Customer) == 0


def test_keys_are_stored_as_sha256_only(
    session_factory: sessionmaker[Session], keys: dict[Role, str]
) -> None:
    with session_factory() as session:
        rows = session.scalars(select(ApiKey)).all()
    assert {row.key_hash for row in rows} == {hash_api_key(k) for k in keys.values()}
    assert all(k.startswith("crml_") and len(k) == 48 for k in keys.values())
    with session_factory() as session:
        for role, key in keys.items():
            principal = lookup(session, key)
            assert principal is not None and principal.role == role
        assert lookup(session, "crml_unknown") is None


def test_a_revoked_key_is_401_once_the_cache_expires(
    app: FastAPI, client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    with session_factory.begin() as session:
        key = create_api_key(session, role=Role.RECORDER, label="leaving soon")
    headers = {"Authorization": f"Bearer {key}"}
    assert client.get("/v1/customers", headers=headers).status_code == 200

    with session_factory.begin() as session:
        key_id = next(k.id for k in list_api_keys(session) if k.label == "leaving soon")
        revoked = revoke_api_key(session, key_id=key_id)
        assert revoked.revoked_at is not None
    # Still cached: revocation takes effect within the cache lifetime.
    assert client.get("/v1/customers", headers=headers).status_code == 200
    key_cache(app).clear()
    problem(client.get("/v1/customers", headers=headers), 401)


def test_expired_cache_entries_are_looked_up_again(
    app: FastAPI, client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    cache = key_cache(app)
    cache.ttl = 0.0
    with session_factory.begin() as session:
        key = create_api_key(session, role=Role.AUDITOR)
    headers = {"Authorization": f"Bearer {key}"}
    assert client.get("/v1/customers", headers=headers).status_code == 200
    with session_factory.begin() as session:
        key_id = session.scalars(
            select(ApiKey.id).where(ApiKey.key_hash == hash_api_key(key))
        ).one()
        revoke_api_key(session, key_id=key_id)
    problem(client.get("/v1/customers", headers=headers), 401)


def test_revoking_an_unknown_key_is_not_found(session_factory: sessionmaker[Session]) -> None:
    with session_factory.begin() as session, pytest.raises(NotFound):
        revoke_api_key(session, key_id="nope")


def test_unknown_roles_are_refused(session_factory: sessionmaker[Session]) -> None:
    with session_factory.begin() as session, pytest.raises(ValueError, match="recorder"):
        create_api_key(session, role="superuser")
