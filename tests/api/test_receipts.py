"""Receipts: 202 while pending, then an RFC 9162 audit path that verifies against the batch root."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.db.models import Batch, BatchStatus, Customer, Deployment, Record, utcnow
from crm_ledger.ledger import merkle
from crm_ledger.ledger.hexcodec import unhex
from crm_ledger.ledger.leaf import LeafInput, RecordKind
from crm_ledger.ledger.receipts import Receipt, check_receipt
from tests.api.helpers import interaction, problem

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

CONTRACT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
CHAIN_ID = 31337


def cut_batch(session_factory: sessionmaker[Session], *, status: str = "anchored") -> Batch:
    """Sequence every pending record into one batch, as the anchorer does, and mark it `status`."""
    with session_factory.begin() as session:
        last = session.scalars(select(Batch).order_by(Batch.id.desc())).first()
        batch_id = 0 if last is None else last.id + 1
        first_seq = 0 if last is None else last.first_seq + last.count
        previous_head = merkle.ZERO_HASH if last is None else last.head
        records = session.scalars(
            select(Record).where(Record.seq.is_(None)).order_by(Record.pk)
        ).all()
        tips = {
            c.pk: c.last_leaf_hash or merkle.ZERO_HASH for c in session.scalars(select(Customer))
        }
        leaves = []
        for offset, record in enumerate(records):
            leaf = LeafInput(
                seq=first_seq + offset,
                kind=RecordKind(record.kind),
                commitment=record.commitment,
                previous_leaf_hash=tips[record.customer_pk],
            )
            record.seq = leaf.seq
            record.previous_leaf_hash = leaf.previous_leaf_hash
            record.leaf_hash = leaf.leaf_hash()
            tips[record.customer_pk] = record.leaf_hash
            leaves.append(record.leaf_hash)
        root = merkle.root(leaves)
        batch = Batch(
            id=batch_id,
            first_seq=first_seq,
            count=len(records),
            root=root,
            previous_head=previous_head,
            head=merkle.next_head(previous_head, root, first_seq, len(records)),
            status=BatchStatus.CUT.value,
        )
        session.add(batch)
        session.flush()
        for record in records:
            record.batch_id = batch_id
        for customer in session.scalars(select(Customer)):
            customer.last_leaf_hash = tips[customer.pk]
        if session.scalar(select(Deployment.pk)) is None:
            session.add(
                Deployment(
                    contract="AuditLedger",
                    epoch=1,
                    chain_id=CHAIN_ID,
                    genesis_hash=bytes(32),
                    address=CONTRACT.lower(),
                    code_hash=hashlib.sha256(b"code").digest(),
                    tx_hash=hashlib.sha256(b"deploy").digest(),
                    block_number=1,
                )
            )
        if status != BatchStatus.CUT.value:
            batch.status = BatchStatus.SENT.value
            batch.tx_hash = hashlib.sha256(f"tx {batch_id}".encode()).digest()
        if status == BatchStatus.ANCHORED.value:
            batch.status = status
            batch.epoch = 1
            batch.block_number = 10 + batch_id
            batch.block_hash = hashlib.sha256(f"block {batch_id}".encode()).digest()
            batch.anchored_at = utcnow()
        return batch


def write(client: TestClient, headers: dict[str, str], customer_id: str, n: int) -> list[str]:
    payload = {"items": [interaction(customer_id, type=f"t{i}") for i in range(n)]}
    response = client.post("/v1/interactions/batch", json=payload, headers=headers)
    assert response.status_code == 201, response.text
    return [item["id"] for item in response.json()["items"]]


def receipt_of(client: TestClient, headers: dict[str, str], record_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/records/{record_id}/receipt", headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_a_pending_record_answers_202_with_retry_after(
    client: TestClient, recorder: dict[str, str], customer_id: str
) -> None:
    (record_id,) = write(client, recorder, customer_id, 1)
    response = client.get(f"/v1/records/{record_id}/receipt", headers=recorder)
    assert response.status_code == 202
    assert response.headers["retry-after"] == "1"
    body = response.json()
    assert body["status"] == "pending" and body["record_id"] == record_id
    assert body["retry_after"] == 1


def test_a_cut_or_sent_batch_is_still_pending(
    client: TestClient,
    recorder: dict[str, str],
    customer_id: str,
    session_factory: sessionmaker[Session],
) -> None:
    first = write(client, recorder, customer_id, 2)
    cut_batch(session_factory, status="cut")
    second = write(client, recorder, customer_id, 2)
    cut_batch(session_factory, status="sent")
    for record_id in first + second:
        response = client.get(f"/v1/records/{record_id}/receipt", headers=recorder)
        assert response.status_code == 202
        record = client.get(f"/v1/records/{record_id}", headers=recorder).json()
        assert record["status"] == "pending" and record["seq"] is not None


def test_receipts_verify_against_the_batch_root(
    client: TestClient,
    recorder: dict[str, str],
    auditor: dict[str, str],
    customer_id: str,
    session_factory: sessionmaker[Session],
) -> None:
    other = client.post(
        "/v1/customers", json={"name": "B", "email": "b@example.com"}, headers=recorder
    ).json()["id"]
    first = write(client, recorder, customer_id, 3) + write(client, recorder, other, 2)
    batch0 = cut_batch(session_factory)
    second = write(client, recorder, other, 6) + write(client, recorder, customer_id, 1)
    batch1 = cut_batch(session_factory)

    for batch, record_ids in ((batch0, first), (batch1, second)):
        for index, record_id in enumerate(record_ids):
            body = receipt_of(client, auditor, record_id)
            receipt = Receipt.from_json(body)
            assert body["format"] == "crm-ledger/receipt/v1"
            assert receipt.record_id == record_id
            assert receipt.leaf_index == index
            assert receipt.seq == batch.first_seq + index
            assert receipt.tree_size == batch.count == len(record_ids)
            assert receipt.batch.root == batch.root and receipt.batch.head == batch.head
            assert receipt.batch.previous_head == batch.previous_head
            assert merkle.verify_inclusion(
                index=receipt.leaf_index,
                tree_size=receipt.tree_size,
                leaf=receipt.leaf_hash,
                proof=receipt.audit_path,
                expected_root=batch.root,
            )
            with session_factory() as session:
                record = session.scalars(select(Record).where(Record.id == record_id)).one()
                assert record.content is not None and record.customer.key is not None
                steps = check_receipt(
                    receipt, content=record.content, customer_key=record.customer.key
                )
            assert all(step.ok for step in steps), steps
            assert body["chain"] == {
                "chain_id": CHAIN_ID,
                "contract": CONTRACT,
                "epoch": 1,
                "tx_hash": "0x" + hashlib.sha256(f"tx {batch.id}".encode()).hexdigest(),
                "block_number": 10 + batch.id,
                "block_hash": "0x" + hashlib.sha256(f"block {batch.id}".encode()).hexdigest(),
            }
            public = client.get(f"/v1/records/{record_id}", headers=auditor).json()
            assert public["status"] == "anchored"
            assert public["seq"] == receipt.seq and public["batch_id"] == batch.id


def test_a_tampered_proof_does_not_verify(
    client: TestClient,
    recorder: dict[str, str],
    customer_id: str,
    session_factory: sessionmaker[Session],
) -> None:
    record_ids = write(client, recorder, customer_id, 5)
    batch = cut_batch(session_factory)
    body = receipt_of(client, recorder, record_ids[2])
    proof = [unhex("audit_path", node, 32) for node in body["audit_path"]]
    leaf = unhex("leaf_hash", body["leaf_hash"], 32)
    assert merkle.verify_inclusion(
        index=2, tree_size=5, leaf=leaf, proof=proof, expected_root=batch.root
    )
    assert not merkle.verify_inclusion(
        index=3, tree_size=5, leaf=leaf, proof=proof, expected_root=batch.root
    )
    proof[0] = bytes(32)
    assert not merkle.verify_inclusion(
        index=2, tree_size=5, leaf=leaf, proof=proof, expected_root=batch.root
    )


def test_an_erased_record_still_has_a_receipt(
    client: TestClient,
    recorder: dict[str, str],
    customer_id: str,
    session_factory: sessionmaker[Session],
) -> None:
    record_ids = write(client, recorder, customer_id, 2)
    cut_batch(session_factory)
    with session_factory.begin() as session:
        session.execute(update(Record).values(content=None))
        session.execute(update(Customer).values(key=None, wrapped_data_key=None, personal=None))
    body = receipt_of(client, recorder, record_ids[1])
    assert all(step.ok for step in check_receipt(Receipt.from_json(body)))
    public = client.get(f"/v1/records/{record_ids[1]}", headers=recorder).json()
    assert public["content"] is None and public["status"] == "anchored"


def test_a_batch_without_its_deployment_is_a_logged_500_not_a_bad_receipt(
    client: TestClient,
    recorder: dict[str, str],
    customer_id: str,
    session_factory: sessionmaker[Session],
) -> None:
    (record_id,) = write(client, recorder, customer_id, 1)
    cut_batch(session_factory)
    with session_factory.begin() as session:
        session.execute(update(Batch).values(epoch=2))
    body = problem(client.get(f"/v1/records/{record_id}/receipt", headers=recorder), 500)
    assert "error_id" in body and "Traceback" not in body["detail"]
