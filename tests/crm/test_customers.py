"""GET /v1/crm/customers: search, filters, every sort key both ways, cursors, bad input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.journal.keys import Role
from tests.api.helpers import problem
from tests.apps import TestClient
from tests.crm import factories as f

BASE = datetime(2026, 3, 1, tzinfo=UTC)


def listing(client: TestClient, headers: dict[str, str], **params: Any) -> dict[str, Any]:
    response = client.get("/v1/crm/customers", headers=headers, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def walk(client: TestClient, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    """Every page, following next_cursor."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = listing(client, headers, **params, **({"cursor": cursor} if cursor else {}))
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


@pytest.fixture
def people(app_sessions: sessionmaker[Session]) -> dict[str, str]:
    """Six customers: names, tags, balances and last interactions that sort differently."""
    f.deployments(app_sessions)
    spec = [
        # name, email, external ref, tags, balance (None: no address), interactions (hours)
        ("Ada", "ada@example.com", "shop-1", ["vip", "eu"], 30, [1, 5]),
        ("bob", "bob@shop.test", "shop-2", ["eu"], 5, [2]),
        ("Cyd", "cyd@example.com", None, [], None, []),
        ("dee", "dee@example.com", None, ["vip"], 30, [3]),
        (None, None, None, [], 0, [4]),
        ("Eve 100%_off", "eve@example.com", "shop-100%_off", ["vip"], 7, []),
    ]
    ids: dict[str, str] = {}
    for n, (name, email, ref, tags, points, hours) in enumerate(spec):
        pk, customer, records = f.customer_with_records(
            app_sessions, len(hours), name=name, email=email, external_ref=ref, tags=tags
        )
        for record, hour in zip(records, hours, strict=True):
            f.set_created_at(app_sessions, [record], BASE + timedelta(hours=hour))
        if points is not None:
            address = "0x" + f"{n + 1:02x}" * 20
            f.wallet(app_sessions, pk, address)
            if points:
                f.balance(app_sessions, address, points)
        ids[name or "erased"] = customer
    return ids


def names(items: list[dict[str, Any]], people: dict[str, str]) -> list[str]:
    by_id = {v: k for k, v in people.items()}
    return [by_id[item["id"]] for item in items]


@pytest.mark.parametrize(
    ("sort", "expected"),
    [
        ("created_at", ["Ada", "bob", "Cyd", "dee", "erased", "Eve 100%_off"]),
        ("-created_at", ["Eve 100%_off", "erased", "dee", "Cyd", "bob", "Ada"]),
        # Never interacted sorts as the oldest; ties by creation order.
        ("last_interaction_at", ["Cyd", "Eve 100%_off", "bob", "dee", "erased", "Ada"]),
        ("-last_interaction_at", ["Ada", "erased", "dee", "bob", "Eve 100%_off", "Cyd"]),
        # No address counts as 0 points.
        ("balance", ["Cyd", "erased", "bob", "Eve 100%_off", "Ada", "dee"]),
        ("-balance", ["dee", "Ada", "Eve 100%_off", "bob", "erased", "Cyd"]),
    ],
)
@pytest.mark.parametrize("page_size", [1, 4, 200])
def test_every_sort_key_pages_in_order_without_gaps(
    client: TestClient,
    headers: dict[Role, dict[str, str]],
    people: dict[str, str],
    sort: str,
    expected: list[str],
    page_size: int,
) -> None:
    items = walk(client, headers[Role.MARKETING], sort=sort, limit=page_size)
    assert names(items, people) == expected


def test_the_list_shows_balances_and_last_interactions(
    client: TestClient, headers: dict[Role, dict[str, str]], people: dict[str, str]
) -> None:
    items = {item["id"]: item for item in listing(client, headers[Role.RECORDER])["items"]}
    ada = items[people["Ada"]]
    assert ada["loyalty_balance"] == 30
    assert ada["last_interaction_at"] == "2026-03-01T05:00:00.000000Z"
    assert ada["tags"] == ["vip", "eu"]
    assert items[people["Cyd"]]["loyalty_balance"] is None
    assert items[people["Cyd"]]["last_interaction_at"] is None
    assert items[people["erased"]]["loyalty_balance"] == 0


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        # An exact email, any case and surrounding space (the blind index of the normal form).
        ({"q": " ADA@Example.com "}, {"Ada"}),
        ({"q": "bob@shop.test"}, {"bob"}),
        # No substring of an email, and no name search: names and emails are sealed.
        ({"q": "EXAMPLE.COM"}, set()),
        ({"q": "Ada"}, set()),
        # Part of the external ref (any case), % and _ taken literally.
        ({"q": "SHOP-"}, {"Ada", "bob", "Eve 100%_off"}),
        ({"q": "100%_"}, {"Eve 100%_off"}),
        ({"q": "%"}, {"Eve 100%_off"}),
        ({"tag": "vip"}, {"Ada", "dee", "Eve 100%_off"}),
        ({"tag": "eu", "q": "ada@example.com"}, {"Ada"}),
        ({"tag": "nobody"}, set()),
        ({"balance_min": 7}, {"Ada", "dee", "Eve 100%_off"}),
        ({"balance_max": 5}, {"bob", "Cyd", "erased"}),
        ({"balance_min": 5, "balance_max": 7}, {"bob", "Eve 100%_off"}),
        ({"last_interaction_after": "2026-03-01T02:30:00Z"}, {"Ada", "dee", "erased"}),
        ({"last_interaction_before": "2026-03-01T03:00:00+00:00"}, {"bob"}),
        (
            {
                "last_interaction_after": "2026-03-01T01:30:00Z",
                "last_interaction_before": "2026-03-01T04:30:00Z",
                "tag": "vip",
            },
            {"dee"},
        ),
    ],
)
def test_search_and_filters(
    client: TestClient,
    headers: dict[Role, dict[str, str]],
    people: dict[str, str],
    params: dict[str, Any],
    expected: set[str],
) -> None:
    items = walk(client, headers[Role.AUDITOR], limit=2, **params)
    assert set(names(items, people)) == expected


def test_search_finds_a_customer_by_id(
    client: TestClient, headers: dict[Role, dict[str, str]], people: dict[str, str]
) -> None:
    items = listing(client, headers[Role.ADMIN], q=people["bob"].upper())["items"]
    assert [item["id"] for item in items] == [people["bob"]]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"sort": "email"}, "sort"),
        ({"sort": "--balance"}, "sort"),
        # Names are sealed: there is no sort by name.
        ({"sort": "name"}, "sort"),
        ({"cursor": "garbage"}, "cursor"),
        ({"cursor": "e30"}, "cursor"),
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
        ({"balance_min": -1}, "balance_min"),
        ({"balance_min": 9, "balance_max": 3}, "balance_min"),
        ({"last_interaction_after": "yesterday"}, "last_interaction_after"),
        ({"last_interaction_after": "2026-03-01T00:00:00"}, "last_interaction_after"),
        (
            {
                "last_interaction_after": "2026-03-02T00:00:00Z",
                "last_interaction_before": "2026-03-01T00:00:00Z",
            },
            "last_interaction_after",
        ),
        ({"q": ""}, "q"),
        ({"tag": "x" * 201}, "tag"),
    ],
)
def test_bad_sorts_filters_and_cursors_get_a_422_naming_the_field(
    client: TestClient,
    headers: dict[Role, dict[str, str]],
    people: dict[str, str],
    params: dict[str, Any],
    field: str,
) -> None:
    body = problem(client.get("/v1/crm/customers", headers=headers[Role.ADMIN], params=params), 422)
    assert field in {error["field"] for error in body["errors"]}, body


def test_a_cursor_only_works_with_the_sort_and_filters_it_came_from(
    client: TestClient, headers: dict[Role, dict[str, str]], people: dict[str, str]
) -> None:
    first = listing(client, headers[Role.ADMIN], sort="balance", limit=2, tag="vip")
    cursor = first["next_cursor"]
    assert cursor is not None
    for other in (
        {"sort": "-balance", "tag": "vip"},
        {"sort": "balance", "tag": "eu"},
        {"sort": "balance"},
    ):
        body = problem(
            client.get(
                "/v1/crm/customers",
                headers=headers[Role.ADMIN],
                params={**other, "cursor": cursor, "limit": 2},
            ),
            422,
        )
        assert "another sort or other filters" in body["detail"]


@pytest.mark.parametrize(
    ("sort", "after_page_one"),
    [
        # The newcomer is the newest: before the cursor, so not on the later pages, and no row
        # of page 1 comes again (an offset would repeat "erased").
        ("-created_at", ["dee", "Cyd", "bob", "Ada"]),
        # No address counts as 0 points; among equals the newest (highest pk) comes first.
        ("-balance", ["Eve 100%_off", "bob", "Newcomer", "erased", "Cyd"]),
    ],
)
def test_pages_continue_after_the_last_row_shown_when_customers_are_added(
    client: TestClient,
    headers: dict[Role, dict[str, str]],
    people: dict[str, str],
    app_sessions: sessionmaker[Session],
    sort: str,
    after_page_one: list[str],
) -> None:
    page = listing(client, headers[Role.MARKETING], sort=sort, limit=2)
    first = names(page["items"], people)
    _, newcomer, _ = f.customer_with_records(app_sessions, 0, name="Newcomer")
    rest: list[dict[str, Any]] = []
    while page["next_cursor"] is not None:
        page = listing(
            client, headers[Role.MARKETING], sort=sort, limit=2, cursor=page["next_cursor"]
        )
        rest += page["items"]
    assert first == {"-created_at": ["Eve 100%_off", "erased"], "-balance": ["dee", "Ada"]}[sort]
    assert names(rest, people | {"Newcomer": newcomer}) == after_page_one
