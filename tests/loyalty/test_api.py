"""The loyalty API on SQLite and PostgreSQL: bad input named, nothing planned; roles; views."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.db.models import LoyaltyAwardJob, LoyaltyIssuance, LoyaltyRedemption
from crm_ledger.journal.keys import Role
from crm_ledger.loyalty.ops import cut_issue_ops
from crm_ledger.loyalty.wallets import link_message
from tests.api.helpers import problem
from tests.loyalty.fakes import make_customers

Headers = dict[Role, dict[str, str]]


def campaign(client: Any, headers: Headers, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"name": "Spring", "budget": 1000}
    body.update(overrides)
    response = client.post("/v1/campaigns", json=body, headers=headers[Role.MARKETING])
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def lot_count(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(LoyaltyIssuance)) or 0)


def test_campaign_is_created_active_with_an_opaque_chain_id(client: Any, headers: Headers) -> None:
    created = campaign(
        client,
        headers,
        rules=[{"type": "order_total", "points_per_unit": "1.5"}],
        per_customer_cap=50,
        points_expire_after="P90D",
    )
    assert created["status"] == "active"
    assert created["remaining"] == 1000 and created["chain_budget"] is None
    assert created["points_expire_after"] == "P90D"
    assert len(created["onchain_id"]) == 66 and b"Spring".hex() not in created["onchain_id"]
    fetched = client.get(f"/v1/campaigns/{created['id']}", headers=headers[Role.ADMIN]).json()
    assert fetched == created


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"budget": 0}, "budget"),
        ({"budget": -5}, "budget"),
        ({"budget": 1.5}, "budget"),
        ({"budget": "100"}, "budget"),
        ({"budget": 10**13}, "budget"),
        ({"per_customer_cap": 0}, "per_customer_cap"),
        (
            {"rules": [{"type": "order_total", "points_per_unit": 1.5}]},
            "rules[0].order_total.points_per_unit",
        ),
        ({"rules": [{"type": "bonus"}]}, "rules[0]"),
        ({"points_expire_after": 3600}, "points_expire_after"),
        ({"starts_at": "2030-01-02T00:00:00Z", "ends_at": "2030-01-01T00:00:00Z"}, ""),
    ],
)
def test_bad_campaigns_are_refused_naming_the_field(
    client: Any, headers: Headers, overrides: dict[str, Any], field: str
) -> None:
    body = {"name": "Spring", "budget": 1000, **overrides}
    found = problem(client.post("/v1/campaigns", json=body, headers=headers[Role.MARKETING]), 422)
    assert any((error["field"] or "").startswith(field) for error in found["errors"]), found


def test_a_window_already_over_is_refused(client: Any, headers: Headers) -> None:
    body = {"name": "Old", "budget": 10, "ends_at": "2001-01-01T00:00:00Z"}
    found = problem(client.post("/v1/campaigns", json=body, headers=headers[Role.MARKETING]), 409)
    assert "past" in found["detail"]


def test_roles(client: Any, headers: Headers) -> None:
    body = {"name": "Spring", "budget": 10}
    for role in (Role.RECORDER, Role.AUDITOR):
        problem(client.post("/v1/campaigns", json=body, headers=headers[role]), 403)
    redemption = {"customer_id": str(uuid.uuid4()), "points": 1, "reward_ref": "mug"}
    problem(client.post("/v1/redemptions", json=redemption, headers=headers[Role.AUDITOR]), 403)
    problem(client.post("/v1/redemptions", json=redemption, headers=headers[Role.RECORDER]), 404)


def test_award_is_planned_whole_and_answered_202_with_a_job(
    client: Any, headers: Headers, app_sessions: sessionmaker[Session]
) -> None:
    created = campaign(client, headers)
    customers = [cid for _, cid in make_customers(app_sessions, 30)]
    response = client.post(
        f"/v1/campaigns/{created['id']}/awards",
        json={"points": 10, "customer_ids": customers},
        headers={**headers[Role.MARKETING], "Idempotency-Key": "award-1"},
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert (job["status"], job["recipients"], job["pending"], job["total_points"]) == (
        "queued",
        30,
        30,
        300,
    )
    progress = client.get(job["progress_url"], headers=headers[Role.MARKETING]).json()
    assert progress == job
    replay = client.post(
        f"/v1/campaigns/{created['id']}/awards",
        json={"points": 10, "customer_ids": customers},
        headers={**headers[Role.MARKETING], "Idempotency-Key": "award-1"},
    )
    assert replay.status_code == 202 and replay.json()["id"] == job["id"]
    assert lot_count(app_sessions) == 30
    after = client.get(f"/v1/campaigns/{created['id']}", headers=headers[Role.MARKETING]).json()
    assert (after["planned_points"], after["remaining"]) == (300, 700)


def test_bad_awards_are_refused_whole(
    client: Any, headers: Headers, app_sessions: sessionmaker[Session]
) -> None:
    created = campaign(client, headers, budget=100, per_customer_cap=15)
    url = f"/v1/campaigns/{created['id']}/awards"
    marketing = headers[Role.MARKETING]
    customers = [cid for _, cid in make_customers(app_sessions, 12)]
    unknown = str(uuid.uuid4())
    found = problem(
        client.post(
            url, json={"points": 1, "customer_ids": [*customers, unknown]}, headers=marketing
        ),
        422,
    )
    assert found["unknown_customer_ids"] == [unknown]
    found = problem(
        client.post(
            url, json={"points": 1, "customer_ids": [customers[0], customers[0]]}, headers=marketing
        ),
        422,
    )
    assert found["duplicate_customer_ids"] == [customers[0]]
    found = problem(
        client.post(url, json={"points": 10, "customer_ids": customers}, headers=marketing), 409
    )
    assert (found["requested_points"], found["remaining_points"]) == (120, 100)
    found = problem(
        client.post(url, json={"points": 16, "customer_ids": customers[:1]}, headers=marketing), 409
    )
    assert found["per_customer_cap"] == 15
    for bad in (0, -1, 2.5, "3", 10**13, True):
        problem(
            client.post(url, json={"points": bad, "customer_ids": customers}, headers=marketing),
            422,
        )
    problem(client.post(url, json={"points": 1}, headers=marketing), 422)
    problem(client.post(url, json={"points": 1, "segment": {}}, headers=marketing), 422)
    problem(
        client.post(url, json={"points": 1, "segment": {"tag": "nobody"}}, headers=marketing), 422
    )
    problem(
        client.post(
            f"/v1/campaigns/{uuid.uuid4()}/awards",
            json={"points": 1, "customer_ids": customers},
            headers=marketing,
        ),
        404,
    )
    assert lot_count(app_sessions) == 0
    client.post(f"/v1/campaigns/{created['id']}/pause", headers=marketing)
    found = problem(
        client.post(url, json={"points": 1, "customer_ids": customers}, headers=marketing), 409
    )
    assert "paused" in found["detail"]
    client.post(f"/v1/campaigns/{created['id']}/close", headers=marketing)
    found = problem(
        client.post(url, json={"points": 1, "customer_ids": customers}, headers=marketing), 409
    )
    assert "closed" in found["detail"]
    problem(client.post(f"/v1/campaigns/{created['id']}/resume", headers=marketing), 409)
    assert lot_count(app_sessions) == 0


def test_award_checks_what_the_chain_has_left(
    client: Any, headers: Headers, app_sessions: sessionmaker[Session], token: Any
) -> None:
    created = campaign(client, headers, budget=100)
    onchain = bytes.fromhex(created["onchain_id"][2:])
    token.budgets[onchain] = 100
    token.campaign_issued[onchain] = 95
    with app_sessions() as session, session.begin():
        session.execute(
            LoyaltyAwardJob.metadata.tables["loyalty_campaigns"].update().values(chain_budget=100)
        )
    customers = [cid for _, cid in make_customers(app_sessions, 6)]
    found = problem(
        client.post(
            f"/v1/campaigns/{created['id']}/awards",
            json={"points": 1, "customer_ids": customers},
            headers=headers[Role.MARKETING],
        ),
        409,
    )
    assert (found["chain_remaining_points"], found["requested_points"]) == (5, 6)


def test_segment_by_tag(client: Any, headers: Headers, app_sessions: sessionmaker[Session]) -> None:
    created = campaign(client, headers)
    make_customers(app_sessions, 3, tags=["gold"])
    make_customers(app_sessions, 2)
    response = client.post(
        f"/v1/campaigns/{created['id']}/awards",
        json={"points": 5, "segment": {"tag": "gold"}},
        headers=headers[Role.MARKETING],
    )
    assert response.status_code == 202, response.text
    assert response.json()["recipients"] == 3


def test_redemption_over_the_balance_is_409_with_the_balance(
    client: Any, headers: Headers, app_sessions: sessionmaker[Session], keyring: Any
) -> None:
    created = campaign(client, headers)
    ((pk, customer_id),) = make_customers(app_sessions, 1)
    client.post(
        f"/v1/campaigns/{created['id']}/awards",
        json={"points": 50, "customer_ids": [customer_id]},
        headers=headers[Role.MARKETING],
    )
    body = {"customer_id": customer_id, "points": 10, "reward_ref": "mug"}
    # Planned but not on chain: nothing to spend yet.
    assert (
        problem(client.post("/v1/redemptions", json=body, headers=headers[Role.RECORDER]), 409)[
            "balance"
        ]
        == 0
    )
    cut_issue_ops(app_sessions, keyring, max_entries=10)
    with app_sessions() as session, session.begin():
        for lot in session.scalars(select(LoyaltyIssuance)):
            lot.status = "issued"
    over = {**body, "points": 51}
    found = problem(client.post("/v1/redemptions", json=over, headers=headers[Role.RECORDER]), 409)
    assert (found["balance"], found["requested_points"]) == (50, 51)
    for bad in (0, -3, 1.5, 10**13):
        problem(
            client.post(
                "/v1/redemptions", json={**body, "points": bad}, headers=headers[Role.RECORDER]
            ),
            422,
        )
    key = {**headers[Role.RECORDER], "Idempotency-Key": "redeem-1"}
    first = client.post("/v1/redemptions", json=body, headers=key)
    again = client.post("/v1/redemptions", json=body, headers=key)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json() and first.json()["status"] == "pending"
    with app_sessions() as session:
        assert session.scalar(select(func.count()).select_from(LoyaltyRedemption)) == 1
    account = client.get(
        f"/v1/customers/{customer_id}/loyalty", headers=headers[Role.AUDITOR]
    ).json()
    assert account["address"] == keyring.address(keyring.index_of(pk))
    assert (account["available"], account["reserved"], account["pending"]) == (40, 10, 0)
    assert account["chain_balance"] == 0
    assert [lot["remaining"] for lot in account["lots"]] == [40]
    assert {entry["type"] for entry in account["history"]} == {"issue", "redeem"}
    redemption = client.get(f"/v1/redemptions/{first.json()['id']}", headers=headers[Role.AUDITOR])
    assert redemption.json()["status"] == "pending"


def test_linking_an_address_needs_its_owners_signature(
    client: Any, headers: Headers, app_sessions: sessionmaker[Session]
) -> None:
    ((_, customer_id),) = make_customers(app_sessions, 1)
    owner = Account.create()
    url = f"/v1/customers/{customer_id}/loyalty/wallet"
    stranger = Account.create()
    message = encode_defunct(text=link_message(customer_id, owner.address))
    forged = "0x" + stranger.sign_message(message).signature.hex().removeprefix("0x")
    found = problem(
        client.post(
            url,
            json={"address": owner.address, "signature": forged},
            headers=headers[Role.RECORDER],
        ),
        422,
    )
    assert found["errors"][0]["field"] == "signature"
    signature = "0x" + owner.sign_message(message).signature.hex().removeprefix("0x")
    response = client.post(
        url, json={"address": owner.address, "signature": signature}, headers=headers[Role.RECORDER]
    )
    assert response.status_code == 200, response.text
    assert (response.json()["address"], response.json()["address_kind"]) == (
        owner.address,
        "linked",
    )
