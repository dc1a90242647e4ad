"""Reconciliation against a real Anvil: each kind of drift is found; the safe ones are repaired,
evidence of tampering never is, and is reported loudly (error log, metric, one feed event)."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select, update

from crm_ledger.db.models import (
    Batch,
    BatchStatus,
    Customer,
    FeedEvent,
    IndexedBalance,
    LoyaltyChainOp,
    LoyaltyIssuance,
)
from crm_ledger.indexer import indexer as indexer_module
from crm_ledger.indexer.reconcile import Reconciler, SourceReader, latest_report, request_run
from crm_ledger.indexer.source import JsonRpcSource
from crm_ledger.loyalty.ops import reset_op
from tests.anchoring.fakes import add_records
from tests.crm import factories as f
from tests.indexer.conftest import AnvilChain, Token, add_wallet

pytestmark = [pytest.mark.chain, pytest.mark.asyncio]

HOLDER = "0x" + "5e" * 20


def reconciler(chain: AnvilChain) -> Reconciler:
    return Reconciler(
        session_factory=chain.session_factory,
        chain=SourceReader(JsonRpcSource(chain.w3)),
        resend_op=reset_op,
    )


def items(report: dict[str, Any]) -> list[dict[str, Any]]:
    assert report["status"] == "done", report
    listed: list[dict[str, Any]] = report["report"]["items"]
    return listed


def drift_events(chain: AnvilChain) -> list[dict[str, Any]]:
    with chain.session_factory() as session:
        return [
            json.loads(payload)
            for payload in session.scalars(
                select(FeedEvent.payload).where(FeedEvent.type == "drift.detected")
            )
        ]


def gauge(kind: str) -> float:
    value = REGISTRY.get_sample_value("crm_ledger_drift_items", {"kind": kind})
    return value if value is not None else 0.0


async def anchored_and_indexed(chain: AnvilChain, batches: int = 3) -> None:
    add_records(chain.session_factory, customers=batches, each=2)
    await chain.anchor(batch_max_records=2)
    await chain.index()


async def test_a_clean_ledger_reconciles_clean(anvil_chain: AnvilChain) -> None:
    await anchored_and_indexed(anvil_chain)
    report = await reconciler(anvil_chain).run(trigger="api")
    assert items(report) == []
    assert report["report"]["clean"] is True
    assert report["report"]["checked"]["journal_batches"] == 3
    assert report["report"]["checked"]["chain_batches"] == 3
    assert drift_events(anvil_chain) == []


async def test_a_root_that_differs_is_reported_loudly_and_never_repaired(
    anvil_chain: AnvilChain, caplog: pytest.LogCaptureFixture
) -> None:
    await anchored_and_indexed(anvil_chain)
    forged = hashlib.sha256(b"forged").digest()
    with anvil_chain.session_factory.begin() as session:
        session.execute(update(Batch).where(Batch.id == 1).values(root=forged))
    runner = reconciler(anvil_chain)
    with caplog.at_level(logging.ERROR, logger="crm_ledger.indexer.reconcile"):
        found = items(await runner.run(trigger="schedule"))
    assert [(item["kind"], item["subject"]) for item in found] == [
        ("batch_root_differs", {"batch_id": 1})
    ]
    assert found[0]["evidence_of_tampering"] is True and found[0]["repaired"] is False
    assert any("evidence, not repaired" in message for message in caplog.messages)
    assert gauge("batch_root_differs") == 1
    with anvil_chain.session_factory() as session:
        assert session.get(Batch, 1).root == forged  # type: ignore[union-attr]

    # Still there on the next run, but announced in the feed only once.
    assert len(items(await runner.run(trigger="schedule"))) == 1
    events = drift_events(anvil_chain)
    assert [(e["kind"], e["subject"]) for e in events] == [("batch_root_differs", {"batch_id": 1})]


async def test_a_batch_on_chain_the_database_does_not_know_is_reported(
    anvil_chain: AnvilChain,
) -> None:
    await anchored_and_indexed(anvil_chain)
    # Someone with the anchorer's key anchors seqs the journal never had.
    await anvil_chain.ledger.send_anchor(6, 2, hashlib.sha256(b"not ours").digest())
    await anvil_chain.index()
    found = items(await reconciler(anvil_chain).run(trigger="api"))
    assert [(item["kind"], item["subject"], item["repaired"]) for item in found] == [
        ("batch_unknown_to_database", {"batch_id": 3}, False)
    ]
    assert drift_events(anvil_chain)[0]["evidence_of_tampering"] is True


async def test_a_batch_missing_on_chain_is_anchored_again(anvil_chain: AnvilChain) -> None:
    await anchored_and_indexed(anvil_chain, batches=2)
    snapshot = await anvil_chain.rpc("evm_snapshot")
    add_records(anvil_chain.session_factory, customers=1, each=2)
    await anvil_chain.anchor(batch_max_records=2)
    indexer = await anvil_chain.index()
    # The chain loses the batch's block; only the indexer has noticed, not the anchorer.
    assert await anvil_chain.rpc("evm_revert", snapshot) is True
    await anvil_chain.mine(3)
    await anvil_chain.index(indexer)
    assert indexer.stats.reorgs == 1

    found = items(await reconciler(anvil_chain).run(trigger="api"))
    assert [(item["kind"], item["subject"], item["repaired"]) for item in found] == [
        ("batch_missing_on_chain", {"batch_id": 2}, True)
    ]
    with anvil_chain.session_factory() as session:
        assert session.get(Batch, 2).status == BatchStatus.CUT.value  # type: ignore[union-attr]
        assert session.get(Batch, 1).status == BatchStatus.ANCHORED.value  # type: ignore[union-attr]

    await anvil_chain.anchor()
    await anvil_chain.index(indexer)
    assert items(await reconciler(anvil_chain).run(trigger="api")) == []


async def test_a_batch_not_indexed_yet_is_not_drift(anvil_chain: AnvilChain) -> None:
    await anchored_and_indexed(anvil_chain, batches=1)
    add_records(anvil_chain.session_factory, customers=1, each=2)
    await anvil_chain.anchor(batch_max_records=2)
    # Anchored, but beyond what the indexer has read: nothing to say yet.
    assert items(await reconciler(anvil_chain).run(trigger="api")) == []


async def loyalty_customer(chain: AnvilChain) -> tuple[Token, int, int]:
    """A deployed token, a customer with a wallet, a campaign; (token, customer pk, campaign)."""
    token = await chain.deploy_token()
    add_records(chain.session_factory, customers=1, each=1)
    with chain.session_factory() as session:
        customer_pk = session.scalars(select(Customer.pk)).one()
    add_wallet(chain.session_factory, customer_pk, HOLDER)
    return token, customer_pk, f.campaign_pk(chain.session_factory)


async def test_an_issuance_missing_on_chain_is_sent_again(anvil_chain: AnvilChain) -> None:
    token, customer_pk, campaign = await loyalty_customer(anvil_chain)
    op_pk = f.op(anvil_chain.session_factory, "issue")
    on_chain_lot, on_chain_id = f.lot(
        anvil_chain.session_factory,
        customer_pk=customer_pk,
        campaign=campaign,
        points=10,
        address=HOLDER,
        op_pk=op_pk,
        block_number=1,
    )
    await token.issue(b"\x03" * 32, [(on_chain_id, HOLDER, 10)])
    missing_lot, missing_id = f.lot(
        anvil_chain.session_factory,
        customer_pk=customer_pk,
        campaign=campaign,
        points=4,
        address=HOLDER,
        op_pk=op_pk,
        block_number=1,
    )
    await anvil_chain.index()
    found = items(await reconciler(anvil_chain).run(trigger="api"))
    missing = [item for item in found if item["kind"] == "issuance_missing_on_chain"]
    assert [(item["subject"], item["repaired"]) for item in missing] == [
        ({"issuance_id": "0x" + missing_id.hex()}, True)
    ]
    with anvil_chain.session_factory() as session:
        op = session.get(LoyaltyChainOp, op_pk)
        assert op is not None and op.status == "planned"
        statuses = dict(
            session.execute(select(LoyaltyIssuance.id, LoyaltyIssuance.status)).tuples().all()
        )
    # The op is planned again; the worker re-sends both ids and the chain skips the used one.
    assert statuses == {on_chain_lot: "planned", missing_lot: "planned"}


async def test_balances_that_differ_are_taken_from_the_chain_or_reported(
    anvil_chain: AnvilChain,
) -> None:
    token, customer_pk, campaign = await loyalty_customer(anvil_chain)
    op_pk = f.op(anvil_chain.session_factory, "issue")
    _, issuance_id = f.lot(
        anvil_chain.session_factory,
        customer_pk=customer_pk,
        campaign=campaign,
        points=10,
        address=HOLDER,
        op_pk=op_pk,
        block_number=1,
    )
    await token.issue(b"\x03" * 32, [(issuance_id, HOLDER, 10)])
    await anvil_chain.index()
    runner = reconciler(anvil_chain)
    assert items(await runner.run(trigger="api")) == []

    # The view's balance is off (the index lost a transfer): set from the chain, repaired.
    with anvil_chain.session_factory.begin() as session:
        session.execute(update(IndexedBalance).values(balance=3))
    found = items(await runner.run(trigger="api"))
    assert [(item["kind"], item["repaired"]) for item in found] == [("balance_differs", True)]
    with anvil_chain.session_factory() as session:
        assert session.scalars(select(IndexedBalance.balance)).one() == 10

    # The lots say otherwise than the chain: reported, and the lots are left as they are.
    with anvil_chain.session_factory.begin() as session:
        session.execute(update(LoyaltyIssuance).values(points=15))
    found = items(await runner.run(trigger="api"))
    assert [(item["kind"], item["repaired"]) for item in found] == [("balance_differs", False)]
    assert "add up to 15" in found[0]["detail"] and "balanceOf" in found[0]["detail"]
    with anvil_chain.session_factory() as session:
        assert session.scalars(select(LoyaltyIssuance.points)).one() == 15


async def test_the_indexer_runs_reconciliations_once_caught_up(
    anvil_chain: AnvilChain, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Look for requested runs on every idle round, not once a second.
    monkeypatch.setattr(indexer_module, "REQUEST_POLL_SECONDS", 0.0)
    await anchored_and_indexed(anvil_chain)
    indexer = anvil_chain.indexer(reconcile=True)
    await anvil_chain.index(indexer)
    assert indexer.stats.waiting_for is None and indexer.stats.lag_blocks == 0
    await indexer.housekeeping()
    assert indexer.reconciler is not None
    first = latest_report(anvil_chain.session_factory)
    assert first is not None and first["trigger"] == "schedule" and first["status"] == "done"
    # A run requested from a process without the indexer is picked up here.
    requested, made = request_run(anvil_chain.session_factory)
    assert made and requested["status"] == "requested"
    again, made_again = request_run(anvil_chain.session_factory)
    assert not made_again and again["id"] == requested["id"]
    await indexer.housekeeping()
    done = latest_report(anvil_chain.session_factory, report_id=requested["id"])
    assert done is not None and done["status"] == "done" and done["trigger"] == "api"
