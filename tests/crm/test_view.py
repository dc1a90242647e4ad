"""GET /v1/crm/customers/{id}: profile, ledger states, loyalty, integrity, timeline paging."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.journal.keys import Role
from tests.api.helpers import problem
from tests.apps import TestClient
from tests.crm import factories as f

HOLDER = "0x" + "Ab" * 20


def view(
    client: TestClient, headers: dict[str, str], customer_id: str, **params: Any
) -> dict[str, Any]:
    response = client.get(f"/v1/crm/customers/{customer_id}", headers=headers, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def by_id(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["id"]: item for item in body["timeline"]["items"]}


def test_each_record_shows_where_it_stands_on_chain(
    client: TestClient, app_sessions: sessionmaker[Session], headers: dict[Role, dict[str, str]]
) -> None:
    f.deployments(app_sessions)
    _, customer, ids = f.customer_with_records(app_sessions, 4)
    confirmed_batch = f.cut(app_sessions, 1)
    anchored_batch = f.cut(app_sessions, 1)
    tampered_batch = f.cut(app_sessions, 1)
    for batch in (confirmed_batch, anchored_batch, tampered_batch):
        f.mark_anchored(app_sessions, batch)
    f.index_batch(app_sessions, confirmed_batch)
    f.index_batch(app_sessions, tampered_batch, root=f.digest("someone else's root"))

    body = view(client, headers[Role.RECORDER], customer)
    items = by_id(body)
    confirmed, anchored, tampered, pending = (items[i]["ledger"] for i in ids)
    assert confirmed == {
        "state": "confirmed",
        "batch_id": confirmed_batch,
        "seq": 0,
        "epoch": 1,
        "tx_hash": "0x" + f.digest(f"tx {confirmed_batch}").hex(),
        "block_number": 100 + confirmed_batch,
        "block_hash": "0x" + f.digest(f"block {confirmed_batch}").hex(),
        "drift": None,
    }
    assert anchored["state"] == "anchored" and anchored["block_number"] == 100 + anchored_batch
    assert tampered["state"] == "anchored" and "another range or root" in tampered["drift"]
    assert pending == {
        "state": "pending",
        "batch_id": None,
        "seq": None,
        "epoch": None,
        "tx_hash": None,
        "block_number": None,
        "block_hash": None,
        "drift": None,
    }
    assert body["records"] == {"pending": 1, "anchored": 2, "confirmed": 1}
    assert items[ids[0]]["kind"] == "interaction"
    assert items[ids[0]]["content"] == {"type": "r0"}
    assert body["customer"]["id"] == customer and body["customer"]["name"] == "Ada"


def test_rewards_redemptions_and_expiries_with_the_chains_balance(
    client: TestClient, app_sessions: sessionmaker[Session], headers: dict[Role, dict[str, str]]
) -> None:
    f.deployments(app_sessions)
    pk, customer, _ = f.customer_with_records(app_sessions, 0)
    f.wallet(app_sessions, pk, HOLDER)
    f.balance(app_sessions, HOLDER, 42)
    campaign = f.campaign_pk(app_sessions)
    issue = f.op(app_sessions, "issue")
    earlier = datetime.now(UTC) - timedelta(hours=1)
    confirmed_lot, confirmed_id = f.lot(
        app_sessions, customer_pk=pk, campaign=campaign, points=50, op_pk=issue, earned_at=earlier
    )
    f.indexed_token_event(app_sessions, "issued", confirmed_id, 50)
    issued_lot, _ = f.lot(app_sessions, customer_pk=pk, campaign=campaign, points=5, op_pk=issue)
    planned_lot, _ = f.lot(
        app_sessions, customer_pk=pk, campaign=campaign, points=1, status="planned"
    )
    failed_lot, _ = f.lot(
        app_sessions, customer_pk=pk, campaign=campaign, points=1, status="failed"
    )
    redeemed, burn = f.redemption(app_sessions, customer_pk=pk, address=HOLDER, points=8)
    f.indexed_token_event(app_sessions, "redeemed", burn, 8)
    f.expiry(app_sessions, customer_pk=pk, lot_id=issued_lot, address=HOLDER, points=5)

    body = view(client, headers[Role.MARKETING], customer)
    assert body["loyalty"] == {"address": HOLDER, "balance": 42, "as_of_block": None}
    items = body["timeline"]["items"]
    states = {(item["kind"], item["id"]): item["ledger"]["state"] for item in items}
    assert states == {
        ("reward", confirmed_lot): "confirmed",
        ("reward", issued_lot): "anchored",
        ("reward", planned_lot): "pending",
        ("reward", failed_lot): "failed",
        ("redemption", redeemed): "confirmed",
        ("expiry", issued_lot): "anchored",
    }
    reward = next(item for item in items if item["id"] == confirmed_lot)
    assert reward["details"]["points"] == 50
    assert reward["details"]["issuance_id"] == "0x" + confirmed_id.hex()
    assert reward["ledger"]["tx_hash"] == "0x" + f.digest(f"issued tx {confirmed_id.hex()}").hex()
    # Newest first: the hour-old reward comes last.
    assert items[-1]["id"] == confirmed_lot


def test_a_customer_without_loyalty_address_has_no_balance(
    client: TestClient, app_sessions: sessionmaker[Session], headers: dict[Role, dict[str, str]]
) -> None:
    _, customer, _ = f.customer_with_records(app_sessions, 1)
    body = view(client, headers[Role.AUDITOR], customer)
    assert body["loyalty"] is None
    assert body["records"] == {"pending": 1, "anchored": 0, "confirmed": 0}
    assert body["timeline"]["items"][0]["ledger"]["state"] == "pending"


def test_the_timeline_pages_through_every_kind_without_gaps_or_repeats(
    client: TestClient, app_sessions: sessionmaker[Session], headers: dict[Role, dict[str, str]]
) -> None:
    f.deployments(app_sessions)
    pk, customer, ids = f.customer_with_records(app_sessions, 7)
    same_instant = datetime(2026, 1, 1, tzinfo=UTC)
    f.set_created_at(app_sessions, ids[:3], same_instant)
    campaign = f.campaign_pk(app_sessions)
    lots = [
        f.lot(
            app_sessions, customer_pk=pk, campaign=campaign, points=n + 1, earned_at=same_instant
        )[0]
        for n in range(3)
    ]
    f.wallet(app_sessions, pk, HOLDER)
    f.redemption(app_sessions, customer_pk=pk, address=HOLDER, points=1)
    everything = view(client, headers[Role.ADMIN], customer, timeline_limit=200)["timeline"]
    assert everything["next_cursor"] is None
    expected = [item["id"] for item in everything["items"]]
    assert len(expected) == 7 + 3 + 1 and set(ids + lots) <= set(expected)

    for size in (1, 2, 3, 5):
        seen: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"timeline_limit": size}
            if cursor:
                params["timeline_cursor"] = cursor
            page = view(client, headers[Role.ADMIN], customer, **params)["timeline"]
            seen += [item["id"] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == expected, size


def test_the_timeline_keeps_only_the_kinds_asked_for(
    client: TestClient, app_sessions: sessionmaker[Session], headers: dict[Role, dict[str, str]]
) -> None:
    pk, customer, _ids = f.customer_with_records(app_sessions, 2)
    campaign = f.campaign_pk(app_sessions)
    f.lot(app_sessions, customer_pk=pk, campaign=campaign, points=3)
    rewards = view(client, headers[Role.ADMIN], customer, kinds="reward")["timeline"]["items"]
    assert [item["kind"] for item in rewards] == ["reward"]
    both = view(client, headers[Role.ADMIN], customer, kinds="interaction,reward")
    assert len(both["timeline"]["items"]) == 3


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"timeline_cursor": "not-a-cursor"}, "timeline_cursor"),
        ({"timeline_cursor": "eyJ0IjoxfQ"}, "timeline_cursor"),
        ({"kinds": "interaction,phone_call"}, "kinds"),
        ({"kinds": ","}, "kinds"),
        ({"timeline_limit": 0}, "timeline_limit"),
        ({"timeline_limit": 201}, "timeline_limit"),
    ],
)
def test_bad_timeline_parameters_get_a_422_naming_the_field(
    client: TestClient,
    app_sessions: sessionmaker[Session],
    headers: dict[Role, dict[str, str]],
    params: dict[str, Any],
    field: str,
) -> None:
    _, customer, _ = f.customer_with_records(app_sessions, 1)
    response = client.get(
        f"/v1/crm/customers/{customer}", headers=headers[Role.ADMIN], params=params
    )
    body = problem(response, 422)
    assert field in {error["field"] for error in body["errors"]}


def test_unknown_customers_and_missing_keys(
    client: TestClient, headers: dict[Role, dict[str, str]]
) -> None:
    unknown = "00000000-0000-4000-8000-000000000000"
    problem(client.get("/v1/crm/customers/" + unknown, headers=headers[Role.ADMIN]), 404)
    problem(client.get("/v1/crm/customers/nope", headers=headers[Role.ADMIN]), 422)
    problem(client.get("/v1/crm/customers/nope"), 401)


# Integrity ------------------------------------------------------------------------------------


def integrity(
    client: TestClient, headers: dict[Role, dict[str, str]], customer: str
) -> dict[str, Any]:
    result: dict[str, Any] = view(client, headers[Role.AUDITOR], customer)["integrity"]
    return result


def test_integrity_is_the_latest_finished_audit(
    client: TestClient, app_sessions: sessionmaker[Session], headers: dict[Role, dict[str, str]]
) -> None:
    f.deployments(app_sessions)
    _, customer, _ids = f.customer_with_records(app_sessions, 2)
    _, other, _ = f.customer_with_records(app_sessions, 2)
    f.mark_anchored(app_sessions, f.cut(app_sessions, 4))
    assert integrity(client, headers, customer)["status"] == "never_audited"

    f.audit_report(app_sessions, status="done", clean=True, discrepancy_count=0, id="a1")
    assert integrity(client, headers, customer)["status"] == "clean"

    report = (
        '{"discrepancies": [{"kind": "commitment_mismatch", "detail": "altered", "seq": 1},'
        ' {"kind": "batch_row_altered", "detail": "root", "batch_id": 9}]}'
    )
    f.audit_report(
        app_sessions, status="done", clean=False, discrepancy_count=2, report=report, id="a2"
    )
    found = integrity(client, headers, customer)
    assert found["status"] == "discrepancies"
    assert found["report_id"] == "a2" and found["ledger_clean"] is False
    assert [d["seq"] for d in found["discrepancies"]] == [1]
    assert integrity(client, headers, other)["status"] == "clean"

    f.audit_report(app_sessions, status="running", finished_at=None, discrepancy_count=0, id="a3")
    still = integrity(client, headers, customer)
    assert still["report_id"] == "a2" and still["audit_running"] is True

    f.audit_report(app_sessions, status="failed", error="chain down", discrepancy_count=0, id="a4")
    failed = integrity(client, headers, customer)
    assert failed["status"] == "failed" and "chain down" in failed["detail"]

    f.audit_report(
        app_sessions, status="done", clean=False, discrepancy_count=50_000, report=report, id="a5"
    )
    assert integrity(client, headers, other)["status"] == "unknown"
