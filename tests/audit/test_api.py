"""The audit API: record checks, customer and ledger audits, digests, exports, roles, bad input."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.api.routes.audit import get_chain_provider
from crm_ledger.audit.reports import latest_report
from crm_ledger.audit.schemas import (
    CustomerAuditPublic,
    DigestCheckPublic,
    LedgerAuditPublic,
    RecordCheckPublic,
)
from crm_ledger.journal.keys import Role
from crm_ledger.ledger.canonical import canonical_json
from crm_ledger.schemas import DigestPublic, ReceiptPublic
from crm_ledger.verifier.chain import AuditChain
from crm_ledger.verifier.check import verify_bundle
from tests.anchoring.fakes import FakeChain, add_records
from tests.api.helpers import answered_as, checked_out_at_dispose, problem
from tests.apps import TestClient
from tests.audit.conftest import FakeChainProvider, Ledger
from tests.audit.fakes import FakeAuditChain, anchor_all, tamper
from tests.waiting import wait_for

pytestmark = pytest.mark.asyncio

Headers = dict[Role, dict[str, str]]


def receipt_and_content(client: Any, headers: Headers, record_id: str) -> tuple[Any, str]:
    """A record's receipt and its canonical content text, as an auditor would have them."""
    receipt = answered_as(
        ReceiptPublic,
        client.get(f"/v1/records/{record_id}/receipt", headers=headers[Role.AUDITOR]),
    )
    record = client.get(f"/v1/records/{record_id}", headers=headers[Role.AUDITOR]).json()
    content = {
        "v": 1,
        "id": record["id"],
        "customer_id": record["customer_id"],
        "kind": record["kind"],
        "recorded_at": record["recorded_at"],
        "body": record["content"],
    }
    return receipt, canonical_json(content).decode()


def steps(answer: dict[str, Any]) -> dict[str, str]:
    return {step["name"]: step["status"] for step in answer["steps"]}


# Record check --------------------------------------------------------------------------------


async def test_a_receipt_with_its_content_verifies_at_every_step(
    client: Any, headers: Headers, ledger: Ledger
) -> None:
    receipt, document = receipt_and_content(client, headers, ledger.records["Brian"][1])
    response = client.post(
        "/v1/audit/verify",
        json={"receipt": receipt, "content": json.loads(document)},
        headers=headers[Role.AUDITOR],
    )
    answer = answered_as(RecordCheckPublic, response)
    assert answer["verdict"] == "valid", answer
    assert answer["content_checked"] is True
    assert set(steps(answer).values()) == {"ok"}
    assert list(steps(answer)) == [
        "leaf_input",
        "leaf_hash",
        "position",
        "inclusion",
        "head",
        "commitment",
        "document",
        "network",
        "root_on_chain",
        "transaction",
        "block",
    ]


async def test_a_record_verifies_by_id_and_its_document_is_the_committed_text(
    client: Any, headers: Headers, ledger: Ledger
) -> None:
    record_id = ledger.records["Chloe"][0]
    auditor = headers[Role.AUDITOR]
    receipt, document = receipt_and_content(client, headers, record_id)
    record = client.get(f"/v1/records/{record_id}", headers=auditor).json()
    assert record["document"] == document

    answer = client.post("/v1/audit/verify", json={"record_id": record_id}, headers=auditor)
    assert answer.status_code == 200, answer.text
    assert answer.json()["verdict"] == "valid" and answer.json()["content_checked"] is True
    assert set(steps(answer.json()).values()) == {"ok"}

    as_text = client.post(
        "/v1/audit/verify",
        json={"receipt": receipt, "content": record["document"]},
        headers=auditor,
    ).json()
    assert as_text["verdict"] == "valid" and steps(as_text)["document"] == "ok"

    missing = "0192f1c4-6a4e-7c3a-9b1e-2f6d1a0b9c8d"
    problem(client.post("/v1/audit/verify", json={"record_id": missing}, headers=auditor), 404)
    pending = client.post(
        "/v1/interactions",
        json={
            "customer_id": ledger.customers["Chloe"],
            "type": "t",
            "channel": "c",
            "occurred_at": "2026-11-25T10:00:00Z",
        },
        headers=headers[Role.RECORDER],
    ).json()["id"]
    found = problem(
        client.post("/v1/audit/verify", json={"record_id": pending}, headers=auditor), 409
    )
    assert "not anchored on chain yet" in found["detail"]


async def test_altered_content_a_wrong_key_or_a_forged_root_fail_their_step(
    client: Any, headers: Headers, ledger: Ledger
) -> None:
    receipt, document = receipt_and_content(client, headers, ledger.records["Ada"][2])
    auditor = headers[Role.AUDITOR]

    altered = json.loads(document)
    altered["body"]["details"]["note"] = "something else"
    answer = client.post(
        "/v1/audit/verify", json={"receipt": receipt, "content": altered}, headers=auditor
    ).json()
    assert answer["verdict"] == "invalid"
    assert steps(answer)["commitment"] == "failed"
    assert steps(answer)["inclusion"] == "ok"

    answer = client.post(
        "/v1/audit/verify",
        json={"receipt": receipt, "content": document, "customer_key": "0x" + "ab" * 32},
        headers=auditor,
    ).json()
    assert steps(answer)["commitment"] == "failed"

    forged = json.loads(json.dumps(receipt))
    forged["batch"]["root"] = "0x" + "cd" * 32
    answer = client.post("/v1/audit/verify", json={"receipt": forged}, headers=auditor).json()
    assert answer["verdict"] == "invalid"
    assert steps(answer)["inclusion"] == "failed"
    assert steps(answer)["root_on_chain"] == "failed"
    assert steps(answer)["commitment"] == "skipped"


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ({"receipt": {"format": "crm-ledger/receipt/v1"}}, "receipt.record_id is missing"),
        ({"receipt": "not an object"}, "receipt must be a JSON object"),
        ({"receipt": None}, "give `record_id` (a record of this service) or a `receipt`"),
        ({}, "receipt"),
        ({"receipt": {}, "record_id": "x"}, "either `record_id`"),
        ({"receipt": {}, "extra": 1}, "extra"),
    ],
)
async def test_malformed_requests_are_422_naming_the_field(
    client: Any, headers: Headers, ledger: Ledger, body: Any, names: str
) -> None:
    found = problem(client.post("/v1/audit/verify", json=body, headers=headers[Role.AUDITOR]), 422)
    assert names in json.dumps(found)


@pytest.mark.parametrize(
    ("path", "value", "names"),
    [
        (("format",), "crm-ledger/receipt/v9", "receipt.format must be"),
        (("seq",), "5", "receipt.seq must be an integer"),
        (("seq",), -1, "receipt.seq must be an integer"),
        (("leaf_input",), "0x0102", "receipt.leaf_input must be 74 bytes of 0x-hex, got 2"),
        (("leaf_hash",), "0xzz", "receipt.leaf_hash must be 32 bytes"),
        (("audit_path",), ["0x00"], "receipt.audit_path[0] must be 32 bytes"),
        (("batch", "root"), "0x" + "ab" * 31, "receipt.batch.root must be 32 bytes of 0x-hex"),
        (("batch",), [], "receipt.batch must be a JSON object"),
        (("chain", "contract"), "0x" + "ab" * 20, "EIP-55"),
        (("chain", "block_number"), True, "receipt.chain.block_number must be an integer"),
    ],
)
async def test_malformed_receipts_are_422_naming_the_field(
    client: Any,
    headers: Headers,
    ledger: Ledger,
    path: tuple[str, ...],
    value: object,
    names: str,
) -> None:
    receipt, _ = receipt_and_content(client, headers, ledger.records["Ada"][0])
    target = receipt
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    found = problem(
        client.post("/v1/audit/verify", json={"receipt": receipt}, headers=headers[Role.AUDITOR]),
        422,
    )
    assert names in found["detail"]
    assert found["errors"][0]["field"] == "receipt"


async def test_malformed_content_and_keys_are_422(
    client: Any, headers: Headers, ledger: Ledger
) -> None:
    receipt, _ = receipt_and_content(client, headers, ledger.records["Ada"][0])
    auditor = headers[Role.AUDITOR]
    found = problem(
        client.post("/v1/audit/verify", json={"receipt": receipt, "content": 12}, headers=auditor),
        422,
    )
    assert found["errors"][0]["field"] == "content"
    found = problem(
        client.post(
            "/v1/audit/verify",
            json={"receipt": receipt, "content": {"amount": 1.5}},
            headers=auditor,
        ),
        422,
    )
    assert "float" in found["detail"]
    found = problem(
        client.post(
            "/v1/audit/verify",
            json={"receipt": receipt, "customer_key": "0x1234"},
            headers=auditor,
        ),
        422,
    )
    assert "customer_key must be 32 bytes" in found["detail"]
    truncated = client.post(
        "/v1/audit/verify",
        content=b'{"receipt": {"format": "crm-ledger/rec',
        headers={**auditor, "Content-Type": "application/json"},
    )
    assert "not valid JSON" in problem(truncated, 422)["detail"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/v1/audit/verify"),
        ("get", "/v1/audit/customers/00000000-0000-4000-8000-000000000000"),
        ("get", "/v1/audit/ledger"),
        ("post", "/v1/audit/ledger"),
        ("get", "/v1/audit/digest"),
        ("post", "/v1/audit/digest/verify"),
        ("get", "/v1/audit/export"),
    ],
)
@pytest.mark.parametrize("role", [Role.RECORDER, Role.MARKETING, None])
async def test_audit_endpoints_need_an_auditor_or_admin_key(
    client: Any, headers: Headers, method: str, path: str, role: Role | None
) -> None:
    headers = headers[role] if role is not None else {}
    response = getattr(client, method)(path, headers=headers)
    assert response.status_code == (403 if role is not None else 401), response.text


# Customer audit ------------------------------------------------------------------------------


async def test_a_customer_audit_reports_each_record(
    client: Any, headers: Headers, ledger: Ledger, database_url: str
) -> None:
    path = f"/v1/audit/customers/{ledger.customers['Chloe']}"
    answer = answered_as(CustomerAuditPublic, client.get(path, headers=headers[Role.ADMIN]))
    assert answer["verdict"] == "ok", answer
    assert [r["status"] for r in answer["records"]] == ["ok", "ok", "ok"]
    assert [r["record_id"] for r in answer["records"]] == ledger.records["Chloe"]

    # Delete Chloe's middle record and alter her first one's content.
    tamper(
        database_url,
        [
            ("DELETE FROM records WHERE id = :id", {"id": ledger.records["Chloe"][1]}),
            (
                "UPDATE records SET content = :c WHERE id = :id",
                {"c": b'{"forged":true}', "id": ledger.records["Chloe"][0]},
            ),
        ],
    )
    answer = answered_as(CustomerAuditPublic, client.get(path, headers=headers[Role.AUDITOR]))
    assert answer["verdict"] == "tampered"
    statuses = [(r["status"], r["record_id"]) for r in answer["records"]]
    assert statuses == [
        ("tampered", ledger.records["Chloe"][0]),
        ("missing", None),
        ("ok", ledger.records["Chloe"][2]),
    ], answer
    assert any("commitment" in p for p in answer["records"][0]["problems"])


async def test_a_customer_audit_of_pending_records_and_unknown_customers(
    client: Any, headers: Headers, ledger: Ledger
) -> None:
    client.post(
        "/v1/interactions",
        json={
            "customer_id": ledger.customers["Ada"],
            "type": "note",
            "channel": "web",
            "occurred_at": "2026-11-25T11:00:00Z",
            "details": {},
        },
        headers=headers[Role.RECORDER],
    )
    answer = client.get(
        f"/v1/audit/customers/{ledger.customers['Ada']}", headers=headers[Role.AUDITOR]
    ).json()
    assert [r["status"] for r in answer["records"]] == ["ok", "ok", "ok", "pending"]
    assert answer["verdict"] == "ok"
    problem(
        client.get(
            "/v1/audit/customers/00000000-0000-4000-8000-000000000000",
            headers=headers[Role.AUDITOR],
        ),
        404,
    )
    problem(client.get("/v1/audit/customers/not-an-id", headers=headers[Role.AUDITOR]), 422)


# Ledger audit --------------------------------------------------------------------------------


def wait_for_report(client: Any, headers: dict[str, str]) -> dict[str, Any]:
    """The latest ledger audit run, once it is no longer running."""
    return wait_for(
        lambda: answered_as(LedgerAuditPublic, client.get("/v1/audit/ledger", headers=headers)),
        10,
        until=lambda found: found["status"] != "running",
        what="the ledger audit to finish",
    )


async def test_a_ledger_audit_runs_in_the_background_and_reports(
    client: Any, headers: Headers, ledger: Ledger, database_url: str
) -> None:
    auditor = headers[Role.AUDITOR]
    problem(client.get("/v1/audit/ledger", headers=auditor), 404)
    started = answered_as(LedgerAuditPublic, client.post("/v1/audit/ledger", headers=auditor), 202)
    assert started["status"] == "running"
    found = wait_for_report(client, auditor)
    assert found["status"] == "done", found
    assert found["clean"] is True
    assert found["records_checked"] == 9
    assert found["report"]["discrepancies"] == []

    tamper(database_url, [("DELETE FROM records WHERE seq = 4", {})])
    client.post("/v1/audit/ledger", headers=auditor)
    found = wait_for_report(client, auditor)
    assert found["clean"] is False
    assert [(d["kind"], d["seq"]) for d in found["report"]["discrepancies"]] == [
        ("deleted_record", 4)
    ]


async def test_a_ledger_audit_that_cannot_reach_the_chain_is_reported_failed(
    client: Any, headers: Headers, ledger: Ledger, fake_chain: FakeChain
) -> None:
    fake_chain.down = True
    client.post("/v1/audit/ledger", headers=headers[Role.ADMIN])
    found = wait_for_report(client, headers[Role.ADMIN])
    assert found["status"] == "failed"
    assert "down" in found["error"]


class SlowChainProvider(FakeChainProvider):
    """A `FakeChainProvider` that takes its time to connect."""

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[Callable[[str], AuditChain]]:
        await asyncio.sleep(0.3)
        async with super().connect() as chain_for:
            yield chain_for


async def test_shutdown_waits_for_a_ledger_audit_in_progress(
    app: FastAPI, headers: Headers, fake_chain: FakeChain, monkeypatch: pytest.MonkeyPatch
) -> None:
    app.dependency_overrides[get_chain_provider] = lambda: SlowChainProvider(fake_chain)
    engine = app.state.runtime.engine
    at_dispose = checked_out_at_dispose(engine, monkeypatch)
    with TestClient(app) as client:
        started = client.post("/v1/audit/ledger", headers=headers[Role.AUDITOR])
        assert started.status_code == 202, started.text
    assert at_dispose == [0]
    stored = latest_report(engine)
    assert stored is not None and stored.status == "done", stored


async def test_customer_audit_and_record_check_when_the_chain_is_down(
    client: Any, headers: Headers, ledger: Ledger, fake_chain: FakeChain
) -> None:
    receipt, document = receipt_and_content(client, headers, ledger.records["Ada"][0])
    fake_chain.down = True
    found = problem(
        client.get(f"/v1/audit/customers/{ledger.customers['Ada']}", headers=headers[Role.AUDITOR]),
        503,
    )
    assert "cannot be reached" in found["detail"]
    answer = answered_as(
        RecordCheckPublic,
        client.post(
            "/v1/audit/verify",
            json={"receipt": receipt, "content": document},
            headers=headers[Role.AUDITOR],
        ),
    )
    assert answer["verdict"] == "incomplete"
    assert steps(answer)["commitment"] == "ok"
    assert steps(answer)["root_on_chain"] == "skipped"


# Digests -------------------------------------------------------------------------------------


async def test_a_saved_digest_is_extended_and_a_forged_one_is_not(
    client: Any,
    headers: Headers,
    ledger: Ledger,
    app_sessions: sessionmaker[Session],
    fake_chain: FakeChain,
    tmp_path: Path,
) -> None:
    auditor = headers[Role.AUDITOR]
    saved = answered_as(DigestPublic, client.get("/v1/audit/digest", headers=auditor))
    assert saved["format"] == "crm-ledger/digest/v1"
    assert saved["batch"]["head"] == "0x" + fake_chain.head.hex()

    add_records(app_sessions, customers=2, each=3)
    await anchor_all(app_sessions, fake_chain, tmp_path)
    verify = client.post("/v1/audit/digest/verify", json=saved, headers=auditor)
    answer = answered_as(DigestCheckPublic, verify)
    assert answer["extends"] is True, answer
    assert answer["records_added"] == 6
    assert answer["head"] == "0x" + fake_chain.head.hex()

    forged = json.loads(json.dumps(saved))
    forged["batch"]["head"] = "0x" + "77" * 32
    verify = client.post("/v1/audit/digest/verify", json=forged, headers=auditor)
    answer = answered_as(DigestCheckPublic, verify)
    assert answer["extends"] is False
    assert any("forged" in failure for failure in answer["failures"])


@pytest.mark.parametrize(
    ("change", "names"),
    [
        (lambda d: d.update(format="crm-ledger/digest/v2"), "digest.format must be"),
        (lambda d: d.pop("batch"), "digest.batch is missing"),
        (lambda d: d["batch"].update(head="0x12"), "digest.batch.head must be 32 bytes"),
        (lambda d: d["chain"].update(epoch="one"), "digest.chain.epoch must be an integer"),
        (lambda d: d.update(extra=True), "unknown field 'extra'"),
    ],
)
async def test_malformed_digests_are_422(
    client: Any, headers: Headers, ledger: Ledger, change: Any, names: str
) -> None:
    digest = client.get("/v1/audit/digest", headers=headers[Role.AUDITOR]).json()
    change(digest)
    found = problem(
        client.post("/v1/audit/digest/verify", json=digest, headers=headers[Role.AUDITOR]), 422
    )
    assert names in found["detail"]


async def test_no_digest_before_anything_is_anchored(client: Any, headers: Headers) -> None:
    problem(client.get("/v1/audit/digest", headers=headers[Role.AUDITOR]), 409)


# Bundles -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [{}, {"customer_id": "Brian"}, {"from_seq": 2, "to_seq": 6}, {"from_seq": 5}],
    ids=["all", "customer", "range", "open range"],
)
async def test_exported_bundles_verify_offline(
    client: Any,
    headers: Headers,
    ledger: Ledger,
    fake_chain: FakeChain,
    tmp_path: Path,
    query: dict[str, Any],
) -> None:
    if "customer_id" in query:
        query = {"customer_id": ledger.customers[query["customer_id"]]}
    response = client.get("/v1/audit/export", params=query, headers=headers[Role.AUDITOR])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/jsonl")
    bundle = tmp_path / "bundle.jsonl"
    bundle.write_bytes(response.content)
    check = await verify_bundle(
        bundle, chain_for=lambda _: FakeAuditChain(fake_chain), contract=None
    )
    assert check.ok, check.failures
    assert check.records == check.commitments_checked > 0
    assert check.batches_on_chain == check.batches


async def test_keys_are_left_out_on_request(client: Any, headers: Headers, ledger: Ledger) -> None:
    response = client.get(
        "/v1/audit/export", params={"include_keys": "false"}, headers=headers[Role.ADMIN]
    )
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines[0]["includes_keys"] is False
    assert not [line for line in lines if line.get("type") == "key"]


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ({"customer_id": "00000000-0000-4000-8000-000000000000"}, 404),
        ({"customer_id": "x", "from_seq": 1}, 422),
        ({"from_seq": 5, "to_seq": 2}, 422),
        ({"from_seq": -1}, 422),
        ({"from_seq": "one"}, 422),
        ({"from_seq": 500}, 422),
    ],
)
async def test_bad_export_queries_are_4xx(
    client: Any, headers: Headers, ledger: Ledger, query: dict[str, Any], status: int
) -> None:
    problem(client.get("/v1/audit/export", params=query, headers=headers[Role.AUDITOR]), status)
