"""Inputs an outside test broke the API with (issue 10, findings 1, 2, 6, 7) and their siblings.

Each answers a problem document with a 4xx a person can act on, writes nothing, and never a 5xx.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from fastapi import FastAPI
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.db.models import Customer, Record
from crm_ledger.journal.schemas import safe_text
from crm_ledger.loyalty.wallets import link_message
from tests.api.helpers import count, interaction, problem

if TYPE_CHECKING:
    from fastapi.testclient import TestClient


def _wallet_body(customer_id: str, *, address_suffix: str = "", sig_suffix: str = "") -> Any:
    owner = Account.create()
    signed = owner.sign_message(encode_defunct(text=link_message(customer_id, owner.address)))
    signature = "0x" + signed.signature.hex().removeprefix("0x")
    return {"address": owner.address + address_suffix, "signature": signature + sig_suffix}


@pytest.mark.parametrize(
    ("address_suffix", "sig_suffix", "field"),
    [("!", "", "address"), ("\n", "", "address"), ("", "zz", "signature"), ("", "\n", "signature")],
)
def test_junk_after_a_valid_address_or_signature_is_422(
    client: TestClient,
    recorder: dict[str, str],
    customer_id: str,
    address_suffix: str,
    sig_suffix: str,
    field: str,
) -> None:
    body = _wallet_body(customer_id, address_suffix=address_suffix, sig_suffix=sig_suffix)

    response = client.post(
        f"/v1/customers/{customer_id}/loyalty/wallet", json=body, headers=recorder
    )

    found = problem(response, 422)
    assert [error["field"] for error in found["errors"]] == [field]


def test_junk_before_a_valid_address_is_422(
    client: TestClient, recorder: dict[str, str], customer_id: str
) -> None:
    body = _wallet_body(customer_id)
    body["address"] = "zz" + body["address"]

    response = client.post(
        f"/v1/customers/{customer_id}/loyalty/wallet", json=body, headers=recorder
    )

    assert problem(response, 422)["errors"][0]["field"] == "address"


def _patterns(node: Any, where: str = "") -> list[tuple[str, str]]:
    if isinstance(node, dict):
        found = [(where, node["pattern"])] if isinstance(node.get("pattern"), str) else []
        for key, value in node.items():
            found += _patterns(value, f"{where}/{key}")
        return found
    if isinstance(node, list):
        return [
            hit for index, item in enumerate(node) for hit in _patterns(item, f"{where}/{index}")
        ]
    return []


def test_every_pattern_in_the_openapi_document_is_anchored(client: TestClient) -> None:
    patterns = _patterns(client.get("/openapi.json").json())

    assert patterns, "the API has patterns (the wallet address at least): the walk found none"
    loose = [(where, p) for where, p in patterns if not (p.startswith("^") and p.endswith("$"))]
    assert loose == []


def test_a_lone_surrogate_as_a_details_key_is_422(
    client: TestClient,
    recorder: dict[str, str],
    customer_id: str,
    session_factory: sessionmaker[Session],
) -> None:
    # json.dumps escapes the lone surrogate as \ud800, which is valid JSON text.
    raw = json.dumps(interaction(customer_id, details={"a": {"\ud800": 1}}))

    response = client.post(
        "/v1/interactions",
        content=raw.encode(),
        headers={**recorder, "Content-Type": "application/json"},
    )

    found = problem(response, 422)
    assert found["errors"][0]["field"] == "details"
    assert "a.\\ud800: contains a lone UTF-16 surrogate" in found["errors"][0]["message"]
    assert count(session_factory, Record) == 0


@pytest.mark.parametrize(
    "key", ["\ud800", "\udfff x", "a\x00b", "\x1b[31mred", "k" * 5000, "\u202eevil"]
)
def test_any_key_in_details_renders_a_safe_problem(
    client: TestClient, recorder: dict[str, str], customer_id: str, key: str
) -> None:
    # A float is refused and its message quotes the key's path.
    raw = json.dumps(interaction(customer_id, details={key: 1.5}))

    response = client.post(
        "/v1/interactions",
        content=raw.encode(),
        headers={**recorder, "Content-Type": "application/json"},
    )

    found = problem(response, 422)
    text = response.content.decode("utf-8")
    assert all(ord(char) >= 0x20 and not 0xD800 <= ord(char) <= 0xDFFF for char in text)
    assert len(found["detail"]) < 1000 and len(found["errors"][0]["message"]) < 1000


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain", "plain"),
        ("\ud800x", "\\ud800x"),
        ("a\x00b\nc", "a\\x00b\\nc"),
        ("\u202e", "\\u202e"),
        ("é and 日本", "é and 日本"),
    ],
)
def test_safe_text_escapes_what_cannot_or_should_not_be_shown(value: str, expected: str) -> None:
    assert safe_text(value) == expected


def test_safe_text_cuts_long_input() -> None:
    shown = safe_text("a" * 10_000 + " is wrong", limit=100)

    assert len(shown) == 100
    assert shown.startswith("a" * 66 + "…") and shown.endswith(" is wrong")


@pytest.mark.parametrize(
    "raw",
    [
        b'{"name": "Ad\xff a", "email": "a@example.com"}',
        b'{"name": "\xc3\x28"}',
        b'{"name": "a\xc0\xafb", "email": "a@example.com"}',
        '{"name": "Zoë"}'.encode("latin-1"),
    ],
)
def test_a_body_that_is_not_utf8_is_422_saying_so(
    client: TestClient,
    recorder: dict[str, str],
    session_factory: sessionmaker[Session],
    raw: bytes,
) -> None:
    response = client.post(
        "/v1/customers", content=raw, headers={**recorder, "Content-Type": "application/json"}
    )

    found = problem(response, 422)
    assert "UTF-8" in found["detail"]
    assert "nests too deeply" not in found["detail"]
    assert count(session_factory, Customer) == 0


@pytest.mark.parametrize("q", ["\x00", "\x00ada", "ad\x00", "\x1f", "\x7f"])
def test_a_control_character_in_q_is_422(
    client: TestClient, recorder: dict[str, str], customer_id: str, q: str
) -> None:
    second = client.post(
        "/v1/customers",
        json={"name": "Grace Hopper", "email": "grace@example.com"},
        headers=recorder,
    )
    assert second.status_code == 201

    response = client.get("/v1/crm/customers", params={"q": q}, headers=recorder)

    found = problem(response, 422)
    assert found["errors"][0]["field"] == "q"
    assert "control character" in found["detail"]


def test_a_control_character_in_tag_is_422(client: TestClient, recorder: dict[str, str]) -> None:
    response = client.get("/v1/crm/customers", params={"tag": "vip\x00"}, headers=recorder)

    assert problem(response, 422)["errors"][0]["field"] == "tag"


def test_q_still_finds_by_name(
    client: TestClient, recorder: dict[str, str], customer_id: str
) -> None:
    client.post(
        "/v1/customers",
        json={"name": "Grace Hopper", "email": "grace@example.com"},
        headers=recorder,
    )

    response = client.get("/v1/crm/customers", params={"q": "lovel"}, headers=recorder)

    assert response.status_code == 200, response.text
    assert [item["id"] for item in response.json()["items"]] == [customer_id]


def test_a_path_quoted_in_the_log_cannot_forge_log_lines(
    app: FastAPI, client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(rest: str) -> None:
        raise RuntimeError("boom")

    app.add_api_route("/explode/{rest}", explode)

    response = client.get("/explode/x%0aERROR forged entry%1b[2J")

    problem(response, 500)
    (record,) = [r for r in caplog.records if "unexpected error" in r.getMessage()]
    assert "\n" not in record.getMessage() and "\x1b" not in record.getMessage()
    assert "x\\nERROR forged entry\\x1b[2J" in record.getMessage()
