"""A REST client records, the service anchors, and the receipt verifies without trusting it.

Runs on Anvil and on a Hardhat node, with SQLite and with PostgreSQL.
"""

from __future__ import annotations

from typing import Any

import pytest
from pymerkle import InmemoryTree  # type: ignore[import-untyped]
from web3 import Web3

from crm_ledger.chain.artifacts import load_artifact
from crm_ledger.chain.node import LocalNode
from crm_ledger.ledger import merkle
from crm_ledger.ledger.hexcodec import unhex
from crm_ledger.ledger.receipts import Receipt, check_receipt
from tests.api.helpers import interaction, order
from tests.waiting import wait_for

pytestmark = pytest.mark.chain


def receipt_of(service: Any, record_id: str) -> dict[str, Any]:
    """Poll the receipt until the record is anchored (202 until then)."""
    answers: list[Any] = []

    def anchored() -> bool:
        answers.append(service.get(f"/v1/records/{record_id}/receipt"))
        assert answers[-1].status_code in (200, 202), answers[-1].text
        return bool(answers[-1].status_code == 200)

    wait_for(anchored, 60)
    body: dict[str, Any] = answers[-1].json()
    return body


def test_recorded_interactions_and_orders_get_receipts_that_verify_on_chain(
    service: Any, node: LocalNode
) -> None:
    customer = service.post(
        "/v1/customers", json={"name": "Ada Lovelace", "email": "ada@example.com"}
    ).json()["id"]
    first = service.post("/v1/interactions", json=interaction(customer))
    assert first.status_code == 201, first.text
    assert first.json()["status"] == "pending"
    pending = service.get(f"/v1/records/{first.json()['id']}/receipt")
    assert pending.status_code in (200, 202)
    batch = service.post(
        "/v1/interactions/batch", json={"items": [interaction(customer) for _ in range(6)]}
    )
    assert batch.status_code == 201, batch.text
    sold = service.post("/v1/orders", json=order(customer))
    assert sold.status_code == 201, sold.text
    record_ids = [first.json()["id"], *(r["id"] for r in batch.json()["items"]), sold.json()["id"]]

    receipts = [Receipt.from_json(receipt_of(service, rid)) for rid in record_ids]
    assert [r.seq for r in receipts] == list(range(len(record_ids)))

    w3 = Web3(Web3.HTTPProvider(node.rpc_url))
    contract = w3.eth.contract(
        address=receipts[0].chain.contract, abi=load_artifact("AuditLedger").abi
    )
    previous_leaf = merkle.ZERO_HASH
    for receipt in receipts:
        # The receipt's own arithmetic: leaf, position, RFC 9162 inclusion, head.
        assert all(step.ok for step in check_receipt(receipt)), check_receipt(receipt)
        # One customer's records chain their leaves.
        assert receipt.leaf_input[42:74] == previous_leaf
        previous_leaf = receipt.leaf_hash
        # The chain, not the service, vouches for the root, the proof and the location.
        first_seq, count, root = contract.functions.batch(receipt.batch.id).call()
        assert (first_seq, count, root) == (
            receipt.batch.first_seq,
            receipt.batch.count,
            receipt.batch.root,
        )
        assert contract.functions.verifyInclusion(
            receipt.batch.id, receipt.leaf_index, receipt.leaf_hash, list(receipt.audit_path)
        ).call()
        tx = w3.eth.get_transaction_receipt(receipt.chain.tx_hash)
        assert tx["blockHash"] == receipt.chain.block_hash
        assert tx["blockNumber"] == receipt.chain.block_number
        events = contract.events.BatchAnchored().process_receipt(tx)
        assert events[0]["args"]["head"] == receipt.batch.head
        assert w3.eth.chain_id == receipt.chain.chain_id

    # An independent RFC 9162 implementation builds the same trees and the same paths.
    by_batch: dict[int, list[Receipt]] = {}
    for receipt in receipts:
        by_batch.setdefault(receipt.batch.id, []).append(receipt)
    for members in by_batch.values():
        if len(members) != members[0].batch.count:
            continue  # a batch shared with records of other tests' customers: none here
        tree = InmemoryTree.init_from_entries([r.leaf_input for r in members], algorithm="sha256")
        assert tree.get_root() == members[0].batch.root
        for r in members:
            path = tree.prove_inclusion(r.leaf_index + 1, r.tree_size).path
            assert path == [r.leaf_hash, *r.audit_path]

    # Content + customer key → the commitment in the leaf (what an auditor with a bundle does).
    record = service.get(f"/v1/records/{record_ids[-1]}").json()
    assert record["status"] == "anchored"
    assert unhex("commitment", record["commitment"], 32) == receipts[-1].leaf_input[10:42]
