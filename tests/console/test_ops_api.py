"""/v1/me and /v1/ops: the figures the console charts, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.console.operations import browser_rpc_url
from crm_ledger.db.models import Batch, BatchStatus, LoyaltyCampaign, LoyaltyIssuance, utcnow
from crm_ledger.journal.keys import Role
from tests.anchoring.fakes import make_customer, make_record
from tests.crm.factories import campaign_pk, digest, lot


def bearer(keys: dict[Role, str], role: Role) -> dict[str, str]:
    return {"Authorization": f"Bearer {keys[role]}"}


def test_me_names_each_key_role_and_refuses_no_key(client: Any, keys: dict[Role, str]) -> None:
    for role in Role:
        answer = client.get("/v1/me", headers=bearer(keys, role))
        assert answer.status_code == 200, answer.text
        assert answer.json()["role"] == role.value
        assert "crml_" not in answer.text
    refused = client.get("/v1/me")
    assert refused.status_code == 401
    assert refused.headers["content-type"] == "application/problem+json"
    assert "Bearer" in refused.json()["detail"]


def _batch(session: Session, batch_id: int, count: int, gas: int, minutes_ago: float) -> None:
    anchored_at = utcnow() - timedelta(minutes=minutes_ago)
    session.add(
        Batch(
            id=batch_id,
            first_seq=batch_id * 1000,
            count=count,
            root=digest(f"root {batch_id}"),
            previous_head=digest(f"head {batch_id - 1}"),
            head=digest(f"head {batch_id}"),
            status=BatchStatus.ANCHORED.value,
            tx_hash=digest(f"tx {batch_id}"),
            block_number=batch_id + 1,
            block_hash=digest(f"block {batch_id}"),
            gas_used=gas,
            created_at=anchored_at - timedelta(seconds=2),
            sent_at=anchored_at - timedelta(seconds=1),
            anchored_at=anchored_at,
        )
    )


def test_overview_counts_batches_per_minute_gas_per_record_and_the_backlog(
    client: Any, keys: dict[Role, str], session_factory: sessionmaker[Session]
) -> None:
    with session_factory.begin() as session:
        _batch(session, 0, 100, 50_000, minutes_ago=90)  # outside a 60-minute window
        _batch(session, 1, 400, 60_000, minutes_ago=5)
        _batch(session, 2, 200, 58_000, minutes_ago=5)
        _batch(session, 3, 1, 45_000, minutes_ago=0)
        customer = make_customer(session)
        for _ in range(3):
            make_record(session, customer)

    answer = client.get("/v1/ops/overview?minutes=60", headers=bearer(keys, Role.RECORDER))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["anchoring"]["pending_records"] == 3
    assert body["anchoring"]["lag_seconds"] >= 0
    assert len(body["per_minute"]) == 60
    assert sum(p["records"] for p in body["per_minute"]) == 601
    assert sum(p["batches"] for p in body["per_minute"]) == 3
    assert sum(p["gas_used"] for p in body["per_minute"]) == 163_000
    # One minute holds batches 1 and 2 (unless the run straddles a minute boundary).
    assert max(p["records"] for p in body["per_minute"]) in (600, 400)
    assert [b["id"] for b in body["batches"]] == [0, 1, 2, 3]
    assert [b["gas_per_record"] for b in body["batches"]] == [500.0, 150.0, 290.0, 45_000.0]
    assert body["batches"][1]["anchoring_seconds"] == 2.0
    assert body["indexer"]["state"] == "stopped"

    limited = client.get("/v1/ops/overview?batches=2", headers=bearer(keys, Role.AUDITOR))
    assert [b["id"] for b in limited.json()["batches"]] == [2, 3]


def test_overview_refuses_bad_windows_and_anonymous_callers(
    client: Any, keys: dict[Role, str]
) -> None:
    for query in ("minutes=0", "minutes=1441", "batches=0", "minutes=abc"):
        answer = client.get(f"/v1/ops/overview?{query}", headers=bearer(keys, Role.ADMIN))
        assert answer.status_code == 422, query
        assert answer.headers["content-type"] == "application/problem+json"
    assert client.get("/v1/ops/overview").status_code == 401


def test_chain_endpoint_offers_the_service_rpc_url_only_without_credentials(
    client: Any, keys: dict[Role, str]
) -> None:
    answer = client.get("/v1/ops/chain", headers=bearer(keys, Role.MARKETING))
    assert answer.status_code == 200
    # No chain deployed yet in this app, and no RPC URL configured (it would start Anvil).
    assert answer.json() == {"chain_id": None, "contract": None, "epoch": None, "rpc_url": None}
    assert browser_rpc_url(configured=None, service_url="http://127.0.0.1:8545") == (
        "http://127.0.0.1:8545"
    )
    for secret in (
        "https://user:pass@rpc.example",
        "https://mainnet.example/v3/0123456789abcdef",
        "https://rpc.example/?apikey=secret",
    ):
        assert browser_rpc_url(configured=None, service_url=secret) is None, secret
    assert browser_rpc_url(configured="https://public.example", service_url=None) == (
        "https://public.example"
    )
    assert browser_rpc_url(configured=None, service_url="ws://127.0.0.1:8545") is None


def test_campaign_spend_over_time_and_points_expiring_by_day(
    client: Any, keys: dict[Role, str], session_factory: sessionmaker[Session]
) -> None:
    campaign = campaign_pk(session_factory)
    with session_factory.begin() as session:
        customer = make_customer(session).pk
    now = utcnow()
    made = {
        name: lot(session_factory, customer_pk=customer, campaign=campaign, points=points)[0]
        for name, points in (("old", 5), ("an hour ago", 20), ("now", 30), ("soon", 7))
    }
    planned = lot(
        session_factory, customer_pk=customer, campaign=campaign, points=99, status="planned"
    )
    issued_at = {
        "old": now - timedelta(days=30),
        "an hour ago": now - timedelta(hours=1),
        "now": now,
        "soon": now,
    }
    expires = {
        "an hour ago": now + timedelta(days=2),
        "now": now + timedelta(days=2, hours=1),
        "soon": now + timedelta(days=40),
        "old": now - timedelta(days=1),
    }
    with session_factory.begin() as session:
        for name, public_id in made.items():
            session.execute(
                update(LoyaltyIssuance)
                .where(LoyaltyIssuance.id == public_id)
                .values(issued_at=issued_at[name], expires_at=expires[name])
            )
        session.execute(
            update(LoyaltyIssuance)
            .where(LoyaltyIssuance.id == planned[0])
            .values(expires_at=now + timedelta(days=1))
        )
        found = session.get(LoyaltyCampaign, campaign)
        assert found is not None
        campaign_id = found.id

    marketing = bearer(keys, Role.MARKETING)
    answer = client.get(
        f"/v1/ops/campaigns/{campaign_id}/spend?bucket=hour&buckets=3", headers=marketing
    )
    assert answer.status_code == 200, answer.text
    points = answer.json()["points"]
    assert [p["issued_points"] for p in points] == [0, 20, 37]
    assert [p["cumulative_points"] for p in points] == [5, 25, 62]

    expiring = client.get("/v1/ops/loyalty/expiring?days=30", headers=marketing).json()
    assert expiring["total_points"] == 50
    assert sum(day["lots"] for day in expiring["by_day"]) == 2

    assert (
        client.get(
            f"/v1/ops/campaigns/{campaign_id}/spend", headers=bearer(keys, Role.AUDITOR)
        ).status_code
        == 403
    )
    # A campaign id that is not one is a 422 naming it, as everywhere in the API; a well-formed
    # id of no campaign, a 404.
    assert client.get("/v1/ops/campaigns/nope/spend", headers=marketing).status_code == 422
    unknown = "0192f1c4-6a4e-7c3a-9b1e-2f6d1a0b9c8d"
    assert client.get(f"/v1/ops/campaigns/{unknown}/spend", headers=marketing).status_code == 404
    assert (
        client.get(
            f"/v1/ops/campaigns/{campaign_id}/spend?bucket=week", headers=marketing
        ).status_code
        == 422
    )
