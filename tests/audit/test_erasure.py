"""Erasure: personal data gone, proofs intact, audits clean, nothing exported ties the customer to
their records."""

from __future__ import annotations

import hmac
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from crm_ledger.audit.ledger import run_ledger_audit
from crm_ledger.journal.erasure import erase_customer
from crm_ledger.journal.keys import Role
from crm_ledger.verifier.check import verify_bundle
from tests.anchoring.fakes import FakeChain
from tests.audit.conftest import Ledger, interaction
from tests.audit.fakes import FakeAuditChain, anchor_all, row

pytestmark = pytest.mark.asyncio

Headers = dict[Role, dict[str, str]]


def erase(client: Any, headers: Headers, customer_id: str) -> Any:
    return client.delete(f"/v1/customers/{customer_id}/personal-data", headers=headers[Role.ADMIN])


async def test_only_admins_erase_and_erasing_twice_changes_nothing(
    client: Any, headers: Headers, ledger: Ledger
) -> None:
    ada = ledger.customers["Ada"]
    for role in (Role.AUDITOR, Role.RECORDER, Role.MARKETING):
        response = client.delete(f"/v1/customers/{ada}/personal-data", headers=headers[role])
        assert response.status_code == 403, response.text
    first = erase(client, headers, ada)
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["customer_id"] == ada
    assert body["erased_records"] == 3
    assert body["already_erased"] is False
    again = erase(client, headers, ada).json()
    assert again["already_erased"] is True
    assert again["erasure_record_id"] == body["erasure_record_id"]
    assert again["erased_at"] == body["erased_at"]
    missing = erase(client, headers, "00000000-0000-4000-8000-000000000000")
    assert missing.status_code == 404


async def test_erasure_removes_personal_data_and_keeps_every_leaf(
    client: Any, headers: Headers, ledger: Ledger, database_url: str
) -> None:
    ada = ledger.customers["Ada"]
    before = [
        row(database_url, "SELECT seq, leaf_hash, commitment FROM records WHERE id = :id", id=rid)
        for rid in ledger.records["Ada"]
    ]
    erasure_id = erase(client, headers, ada).json()["erasure_record_id"]

    customer = client.get(f"/v1/customers/{ada}", headers=headers[Role.AUDITOR]).json()
    assert (customer["name"], customer["email"], customer["phone"]) == (None, None, None)
    assert customer["erased_at"] is not None
    assert row(database_url, "SELECT key FROM customers WHERE id = :id", id=ada).key is None
    for rid, kept in zip(ledger.records["Ada"], before, strict=True):
        now = row(
            database_url,
            "SELECT seq, leaf_hash, commitment, content FROM records WHERE id = :id",
            id=rid,
        )
        assert now.content is None
        assert (now.seq, now.leaf_hash, now.commitment) == tuple(kept)
        assert (
            client.get(f"/v1/records/{rid}", headers=headers[Role.AUDITOR]).json()["content"]
            is None
        )

    # The erasure record holds no personal data and is committed with a key of its own.
    erasure = row(
        database_url,
        "SELECT kind, content, commitment, key FROM records WHERE id = :id",
        id=erasure_id,
    )
    document = json.loads(erasure.content)
    assert document["kind"] == "erasure"
    assert document["body"] == {"erased_records": 3}
    assert b"Ada" not in bytes(erasure.content)
    assert hmac.digest(bytes(erasure.key), bytes(erasure.content), "sha256") == bytes(
        erasure.commitment
    )

    refused = client.post(
        "/v1/interactions", json=interaction(ada, "after"), headers=headers[Role.RECORDER]
    )
    assert refused.status_code == 409


async def test_after_erasure_audits_stay_clean_and_receipts_still_verify(
    client: Any,
    headers: Headers,
    ledger: Ledger,
    engine: Engine,
    app_sessions: sessionmaker[Session],
    fake_chain: FakeChain,
    tmp_path: Path,
) -> None:
    ada = ledger.customers["Ada"]
    receipts = [
        client.get(f"/v1/records/{rid}/receipt", headers=headers[Role.AUDITOR]).json()
        for rid in ledger.records["Ada"]
    ]
    # One more record, still pending when the customer is erased.
    pending = client.post(
        "/v1/interactions", json=interaction(ada, "late"), headers=headers[Role.RECORDER]
    ).json()["id"]
    erasure_id = erase(client, headers, ada).json()["erasure_record_id"]
    await anchor_all(app_sessions, fake_chain, tmp_path)

    report = await run_ledger_audit(engine=engine, chain=FakeAuditChain(fake_chain))
    assert report.clean, report.to_json()
    assert report.erased_records == 4

    answer = client.get(f"/v1/audit/customers/{ada}", headers=headers[Role.AUDITOR]).json()
    assert answer["erased"] is True
    assert answer["verdict"] == "ok", answer
    assert [(r["record_id"], r["status"]) for r in answer["records"]] == [
        *((rid, "erased") for rid in ledger.records["Ada"]),
        (pending, "erased"),
        (erasure_id, "ok"),
    ]

    for receipt in receipts:
        checked = client.post(
            "/v1/audit/verify",
            json={"receipt": receipt, "content": '{"kept":"by the auditor"}'},
            headers=headers[Role.AUDITOR],
        ).json()
        assert checked["verdict"] == "valid", checked
        assert checked["content_checked"] is False
        commitment = next(s for s in checked["steps"] if s["name"] == "commitment")
        assert commitment["status"] == "skipped"
        assert "erased" in commitment["detail"]
    refreshed = client.get(
        f"/v1/records/{ledger.records['Ada'][0]}/receipt", headers=headers[Role.AUDITOR]
    ).json()
    assert refreshed == receipts[0]


async def test_nothing_exported_ties_the_erased_customer_to_their_records(
    client: Any,
    headers: Headers,
    ledger: Ledger,
    app_sessions: sessionmaker[Session],
    fake_chain: FakeChain,
    tmp_path: Path,
) -> None:
    ada = ledger.customers["Ada"]
    erasure_id = erase(client, headers, ada).json()["erasure_record_id"]
    await anchor_all(app_sessions, fake_chain, tmp_path)

    refused = client.get(
        "/v1/audit/export", params={"customer_id": ada}, headers=headers[Role.AUDITOR]
    )
    assert refused.status_code == 409
    for query in ({}, {"from_seq": 0, "to_seq": 9}):
        bundle = client.get("/v1/audit/export", params=query, headers=headers[Role.AUDITOR])
        assert bundle.status_code == 200
        text = bundle.text
        for secret in (ada, erasure_id, *ledger.records["Ada"], "Ada", "ada@example.com"):
            assert secret not in text, secret
        records = [json.loads(line) for line in text.splitlines() if '"type":"record"' in line]
        anonymous = [r for r in records if r["customer_id"] is None]
        assert len(anonymous) == 4  # 3 erased records and the erasure record: leaves only
        assert all(r["content"] is None and r["record_id"] is None for r in anonymous)
        path = tmp_path / "bundle.jsonl"
        path.write_bytes(bundle.content)
        check = await verify_bundle(
            path, chain_for=lambda _: FakeAuditChain(fake_chain), contract=None
        )
        assert check.ok, check.failures
        assert check.erased == 4
    # On chain: only ranges, roots and heads.
    for event in fake_chain.events:
        assert ada.encode() not in repr(event).encode()


async def test_an_erasure_that_waits_on_a_lock_gives_up_and_retries(
    client: Any,
    headers: Headers,
    ledger: Ledger,
    database_url: str,
    app_sessions: sessionmaker[Session],
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("row locks and lock_timeout are PostgreSQL's; SQLite has one writer")
    ada = ledger.customers["Ada"]
    engine = create_engine(database_url, poolclass=NullPool)
    held = threading.Event()
    release = threading.Event()

    def hold_the_customer_row() -> None:
        # Another transaction (say, the anchorer moving Ada's last leaf) holds her row.
        with engine.begin() as conn:
            conn.execute(text("SELECT pk FROM customers WHERE id = :id FOR UPDATE"), {"id": ada})
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold_the_customer_row)
    holder.start()
    try:
        assert held.wait(10)
        # Alone, the erasure gives up within its lock timeout instead of waiting on...
        started = time.monotonic()
        with pytest.raises(OperationalError) as raised, app_sessions.begin() as session:
            erase_customer(session=session, customer_id=ada)
        assert raised.value.orig is not None
        assert getattr(raised.value.orig, "sqlstate", None) == "55P03"
        assert time.monotonic() - started < 0.9
        # ...and the endpoint retries until the row is free.
        threading.Timer(0.8, release.set).start()
        response = erase(client, headers, ada)
    finally:
        release.set()
        holder.join()
        engine.dispose()
    assert response.status_code == 200, response.text
    assert response.json()["erased_records"] == 3
