"""The webhook endpoint's stores of one group commit: one query checks every delivery's source
and one INSERT stores them, yet each delivery gets the outcome it would have had alone (a
rotated source stores nothing of its deliveries, a delivery id stored already is that
delivery's error only)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.api.routes.webhooks import _Store, _Stored
from crm_ledger.db.models import IngestDelivery
from crm_ledger.ingest import inbox
from crm_ledger.ingest.sources import VerifyingKeys, verifying_keys
from tests.committing import run_group
from tests.ingest.conftest import TestClient, make_source

OTHER_SECRET = "shpss_other_000000000000000000000000000"


def _keys(factory: sessionmaker[Session], source: dict[str, Any]) -> VerifyingKeys:
    with factory() as session:
        return verifying_keys(session=session, platform=source["platform"], source_id=source["id"])


def _store(keys: VerifyingKeys, delivery_id: str) -> _Store:
    row = inbox.pending_row(
        source_pk=keys.source_pk, delivery_id=delivery_id, topic="orders/create", body=b"{}"
    )
    return _Store(keys, row)


def _stored(factory: sessionmaker[Session]) -> set[tuple[int, str]]:
    with factory() as session:
        return set(session.execute(select(IngestDelivery.source_pk, IngestDelivery.delivery_id)))


def test_a_group_of_deliveries_is_one_source_check_and_one_insert(
    client: TestClient,
    admin: dict[str, str],
    shopify: dict[str, Any],
    session_factory: sessionmaker[Session],
    statements: list[str],
) -> None:
    other = make_source(client, admin, platform="shopify", name="Other", secret=OTHER_SECRET)
    first, second = _keys(session_factory, shopify), _keys(session_factory, other)
    # The second source is rotated after its keys were read (by another process, say).
    rotated = client.post(
        f"/v1/sources/{other['id']}/rotate", json={"secret": OTHER_SECRET + "x"}, headers=admin
    )
    assert rotated.status_code == 200, rotated.text
    statements.clear()

    outcomes = run_group(
        session_factory,
        [_store(first, "d-1"), _store(second, "d-2"), _store(first, "d-3")],
    )

    assert outcomes == [_Stored.NOW, _Stored.SOURCE_CHANGED, _Stored.NOW]
    assert _stored(session_factory) == {(first.source_pk, "d-1"), (first.source_pk, "d-3")}
    source_reads = [s for s in statements if s.startswith("SELECT ingest_sources.pk")]
    inserts = [s for s in statements if s.startswith("INSERT INTO ingest_deliveries")]
    assert len(source_reads) == 1 and len(inserts) == 1, statements


def test_a_delivery_stored_already_fails_alone_and_the_rest_of_its_group_is_stored(
    shopify: dict[str, Any], session_factory: sessionmaker[Session]
) -> None:
    keys = _keys(session_factory, shopify)
    assert run_group(session_factory, [_store(keys, "d-1")]) == [_Stored.NOW]

    outcomes = run_group(
        session_factory,
        [_store(keys, "d-2"), _store(keys, "d-1"), _store(keys, "d-3"), _store(keys, "d-3")],
    )

    assert outcomes[0] is _Stored.NOW and outcomes[2] is _Stored.NOW
    assert isinstance(outcomes[1], IntegrityError) and isinstance(outcomes[3], IntegrityError)
    assert _stored(session_factory) == {(keys.source_pk, f"d-{n}") for n in (1, 2, 3)}
