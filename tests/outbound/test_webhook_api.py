"""/v1/webhook-subscriptions: create (secret shown once, stored encrypted), list, get,
update, pause/resume, rotate, delete, the delivery log, redelivery and replay; SSRF refusals;
roles; and bad input answered with problem documents that write nothing."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger import feed
from crm_ledger.db.models import WebhookDelivery, WebhookSubscription, utcnow
from crm_ledger.journal.keys import Role
from crm_ledger.journal.privacy import keyring_for_engine
from crm_ledger.outbound.webhooks.secrets import unseal
from tests.api.helpers import count, problem
from tests.apps import TestClient
from tests.outbound.conftest import write_events

BASE = "/v1/webhook-subscriptions"
PUBLIC_URL = "https://93.184.215.14/hooks"  # a literal public address: no DNS needed


def create(client: TestClient, admin: dict[str, str], **overrides: Any) -> dict[str, Any]:
    body = {"url": PUBLIC_URL, "event_types": ["record.anchored"], "description": "CRM"}
    body.update(overrides)
    response = client.post(BASE, json=body, headers=admin)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def test_create_shows_the_secret_once_and_stores_it_encrypted(
    client: TestClient, admin: dict[str, str], app_sessions: sessionmaker[Session], app: FastAPI
) -> None:
    headers = {**admin, "Idempotency-Key": "sub-1"}
    body = {"url": PUBLIC_URL, "event_types": ["record.anchored", "reward.issued"]}
    first = client.post(BASE, json=body, headers=headers)
    assert first.status_code == 201, first.text
    created = first.json()
    secret = created["secret"]
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    assert created["status"] == "active" and created["event_types"] == body["event_types"]

    replay = client.post(BASE, json=body, headers=headers)
    assert replay.status_code == 201 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json()["id"] == created["id"] and replay.json()["secret"] is None
    assert count(app_sessions, WebhookSubscription) == 1

    listed = client.get(BASE, headers=admin).json()["items"]
    fetched = client.get(f"{BASE}/{created['id']}", headers=admin).json()
    assert [item["id"] for item in listed] == [created["id"]]
    assert "secret" not in listed[0] and "secret" not in fetched
    with app_sessions() as session:
        row = session.scalars(select(WebhookSubscription)).one()
    assert secret.encode() not in row.secret and secret[6:].encode() not in row.secret
    keyring = keyring_for_engine(app.state.runtime.engine)
    assert keyring is not None
    assert unseal(row.secret, keyring=keyring, subscription_id=row.id) == secret


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://172.16.5.4/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.100.100.200/latest/meta-data/",
        "http://[::1]/hook",
        "http://[fd00:ec2::254]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://0.0.0.0/hook",
    ],
)
def test_urls_that_lead_inside_the_network_are_refused(
    client: TestClient, admin: dict[str, str], app_sessions: sessionmaker[Session], url: str
) -> None:
    body = problem(
        client.post(BASE, json={"url": url, "event_types": ["record.anchored"]}, headers=admin),
        422,
    )
    assert body["type"] == "urn:crm-ledger:problem:unsafe-webhook-url"
    assert "public addresses only" in body["detail"]
    assert count(app_sessions, WebhookSubscription) == 0


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ftp://93.184.215.14/x", "http:// or https://"),
        ("https://user:pw@93.184.215.14/x", "user name or password"),
        ("https://no-such-host.invalid/x", "does not resolve"),
    ],
)
def test_malformed_or_unresolvable_urls_are_refused(
    client: TestClient,
    admin: dict[str, str],
    app_sessions: sessionmaker[Session],
    url: str,
    says: str,
) -> None:
    body = problem(
        client.post(BASE, json={"url": url, "event_types": ["record.anchored"]}, headers=admin),
        422,
    )
    assert says in body["detail"]
    assert count(app_sessions, WebhookSubscription) == 0


@pytest.mark.parametrize("settings_overrides", [{"webhook_allow_private_urls": True}])
def test_private_urls_are_accepted_when_the_setting_allows_them(
    client: TestClient, admin: dict[str, str]
) -> None:
    created = create(client, admin, url="http://127.0.0.1:9/hook")
    assert created["url"] == "http://127.0.0.1:9/hook"


def test_update_pause_resume_rotate_and_delete(
    client: TestClient, admin: dict[str, str], app_sessions: sessionmaker[Session]
) -> None:
    created = create(client, admin)
    path = f"{BASE}/{created['id']}"

    updated = client.patch(
        path, json={"event_types": ["reward.issued"], "description": "loyalty"}, headers=admin
    )
    assert updated.status_code == 200, updated.text
    assert updated.json()["event_types"] == ["reward.issued"]
    assert updated.json()["url"] == PUBLIC_URL and updated.json()["description"] == "loyalty"
    problem(client.patch(path, json={"url": "http://10.0.0.1/x"}, headers=admin), 422)
    assert client.get(path, headers=admin).json()["url"] == PUBLIC_URL

    paused = client.post(f"{path}/pause", headers=admin).json()
    assert paused["status"] == "paused" and paused["paused_reason"] == "paused through the API"
    resumed = client.post(f"{path}/resume", headers=admin).json()
    assert resumed["status"] == "active" and resumed["paused_reason"] is None

    rotated = client.post(f"{path}/rotate-secret", headers=admin)
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["secret"].startswith("whsec_")
    assert rotated.json()["secret"] != created["secret"]
    with app_sessions() as session:
        row = session.scalars(select(WebhookSubscription)).one()
        assert row.previous_secret is not None
        assert row.previous_secret_expires_at is not None
        assert row.previous_secret_expires_at > utcnow()

    assert client.delete(path, headers=admin).status_code == 204
    problem(client.get(path, headers=admin), 404)
    problem(client.delete(path, headers=admin), 404)
    assert count(app_sessions, WebhookSubscription) == 0


def test_delivery_log_redelivery_and_replay(
    client: TestClient, admin: dict[str, str], app_sessions: sessionmaker[Session]
) -> None:
    created = create(client, admin, event_types=["record.anchored", "reward.issued"])
    path = f"{BASE}/{created['id']}"
    assert client.get(f"{path}/deliveries", headers=admin).json() == {
        "items": [],
        "next_before": None,
    }
    write_events(app_sessions, 3)
    with app_sessions.begin() as session:
        sub = session.scalars(select(WebhookSubscription)).one()
        items = feed.read_page(session, after=None, limit=10).items
        for n, item in enumerate(items[:2]):
            session.add(
                WebhookDelivery(
                    subscription_pk=sub.pk,
                    message_id=item.id,
                    event_type=item.type,
                    feed_position=item.position,
                    payload="{}",
                    status="failed" if n == 0 else "succeeded",
                    attempts=8 if n == 0 else 1,
                    last_response_code=500 if n == 0 else 200,
                    created_at=utcnow(),
                )
            )
        sub.position = items[-1].position

    log = client.get(f"{path}/deliveries", params={"limit": 1}, headers=admin).json()
    assert [d["event_id"] for d in log["items"]] == [items[1].id]
    older = client.get(
        f"{path}/deliveries", params={"before": log["next_before"]}, headers=admin
    ).json()
    assert [d["event_id"] for d in older["items"]] == [items[0].id]
    assert older["items"][0]["status"] == "failed" and older["items"][0]["attempts"] == 8
    assert older["items"][0]["event_cursor"] == items[0].cursor
    failed = client.get(f"{path}/deliveries", params={"status": "failed"}, headers=admin).json()
    assert [d["id"] for d in failed["items"]] == [older["items"][0]["id"]]

    again = client.post(f"{path}/deliveries/{older['items'][0]['id']}/redeliver", headers=admin)
    assert again.status_code == 202, again.text
    assert again.json()["event_id"] == items[0].id and again.json()["status"] == "pending"
    assert again.json()["attempts"] == 0 and again.json()["next_attempt_at"] is not None
    problem(client.post(f"{path}/deliveries/nope/redeliver", headers=admin), 404)

    replayed = client.post(f"{path}/replay", json={"after": items[0].cursor}, headers=admin)
    assert replayed.status_code == 202, replayed.text
    assert replayed.json()["cursor"] == items[0].cursor
    # Forward is not a replay; garbage is not a cursor.
    problem(client.post(f"{path}/replay", json={"after": items[2].cursor}, headers=admin), 422)
    problem(client.post(f"{path}/replay", json={"after": "garbage"}, headers=admin), 422)
    from_start = client.post(f"{path}/replay", json={}, headers=admin)
    assert from_start.json()["cursor"] == feed.encode_cursor(0)


def test_only_admin_keys_manage_subscriptions(
    client: TestClient, headers: dict[Role, dict[str, str]]
) -> None:
    body = {"url": PUBLIC_URL, "event_types": ["record.anchored"]}
    problem(client.post(BASE, json=body), 401)
    for role in (Role.RECORDER, Role.AUDITOR, Role.MARKETING):
        problem(client.post(BASE, json=body, headers=headers[role]), 403)
        problem(client.get(BASE, headers=headers[role]), 403)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": PUBLIC_URL, "event_types": ["order.shipped"]}, "event_types"),
        ({"url": PUBLIC_URL, "event_types": []}, "event_types"),
        ({"url": PUBLIC_URL}, "event_types"),
        ({"event_types": ["record.anchored"]}, "url"),
        ({"url": PUBLIC_URL, "event_types": ["record.anchored"], "secret": "x"}, "secret"),
    ],
)
def test_bad_bodies_are_422_and_write_nothing(
    client: TestClient,
    admin: dict[str, str],
    app_sessions: sessionmaker[Session],
    body: dict[str, Any],
    field: str,
) -> None:
    answer = problem(client.post(BASE, json=body, headers=admin), 422)
    assert field in {error["field"].split("[")[0] for error in answer["errors"]}
    assert count(app_sessions, WebhookSubscription) == 0


def test_every_status_the_routes_answer_is_in_the_openapi_document(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    create_doc = paths[BASE]["post"]["responses"]
    assert {"201", "401", "403", "409", "422"} <= create_doc.keys()
    assert {"204", "404"} <= paths[BASE + "/{subscription_id}"]["delete"]["responses"].keys()
    replay_doc = paths[BASE + "/{subscription_id}/replay"]["post"]["responses"]
    assert {"202", "404", "410", "422"} <= replay_doc.keys()
