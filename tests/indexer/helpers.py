"""What the reorg and restart tests compare: the view's derived state, and the feed folded up."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.db.models import (
    Batch,
    BatchStatus,
    FeedEvent,
    IndexedBalance,
    IndexedBatch,
    IndexedTokenEvent,
    IndexerStream,
    Record,
)
from tests.anchoring.fakes import make_record


def add_more_records(
    session_factory: sessionmaker[Session], customer_pks: list[int], each: int
) -> None:
    """`each` new pending records for every customer in `customer_pks`."""
    from crm_ledger.db.models import Customer

    with session_factory.begin() as session:
        customers = [session.get(Customer, pk) for pk in customer_pks]
        for n in range(each):
            for customer in customers:
                assert customer is not None
                make_record(session, customer, note=f"more-{n}")


def view_snapshot(session_factory: sessionmaker[Session]) -> dict[str, Any]:
    """Everything the indexer derived from the chain, without row ids or timestamps."""
    with session_factory() as session:
        batches = sorted(
            tuple(row)
            for row in session.execute(
                select(
                    IndexedBatch.epoch,
                    IndexedBatch.batch_id,
                    IndexedBatch.first_seq,
                    IndexedBatch.count,
                    IndexedBatch.root,
                    IndexedBatch.head,
                    IndexedBatch.tx_hash,
                    IndexedBatch.block_number,
                    IndexedBatch.block_hash,
                    IndexedBatch.log_index,
                )
            )
        )
        tokens = sorted(
            (
                tuple(row)
                for row in session.execute(
                    select(
                        IndexedTokenEvent.epoch,
                        IndexedTokenEvent.event,
                        IndexedTokenEvent.token_id,
                        IndexedTokenEvent.campaign,
                        IndexedTokenEvent.reference,
                        IndexedTokenEvent.from_address,
                        IndexedTokenEvent.to_address,
                        IndexedTokenEvent.amount,
                        IndexedTokenEvent.tx_hash,
                        IndexedTokenEvent.block_number,
                        IndexedTokenEvent.block_hash,
                        IndexedTokenEvent.log_index,
                    ),
                )
            ),
            key=repr,
        )
        balances = sorted(
            tuple(row)
            for row in session.execute(
                select(
                    IndexedBalance.epoch,
                    IndexedBalance.address,
                    IndexedBalance.balance,
                    IndexedBalance.block_number,
                )
            )
        )
        streams = sorted(
            tuple(row)
            for row in session.execute(
                select(IndexerStream.contract, IndexerStream.epoch, IndexerStream.next_block)
            )
        )
        return {"batches": batches, "tokens": tokens, "balances": balances, "streams": streams}


def confirmed_records(session_factory: sessionmaker[Session]) -> dict[str, tuple[int, str, int]]:
    """record id -> (batch id, tx hash, block) for records whose batch the index confirms."""
    with session_factory() as session:
        rows = session.execute(
            select(
                Record.id, IndexedBatch.batch_id, IndexedBatch.tx_hash, IndexedBatch.block_number
            )
            .join(Batch, Batch.id == Record.batch_id)
            .join(IndexedBatch, IndexedBatch.batch_id == Batch.id)
            .where(IndexedBatch.root == Batch.root)
        )
        return {
            str(record_id): (int(batch_id), "0x" + bytes(tx).hex(), int(block))
            for record_id, batch_id, tx, block in rows
        }


def folded_feed(session_factory: sessionmaker[Session]) -> dict[str, Any]:
    """The feed replayed: records anchored and not unanchored since; rewards not retracted."""
    records: dict[str, tuple[int, str, int]] = {}
    anchored_by_event: dict[str, str] = {}
    history: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    rewards: dict[str, tuple[str, int]] = {}
    with session_factory() as session:
        for event in session.scalars(select(FeedEvent).order_by(FeedEvent.pk)):
            data = json.loads(event.payload)
            if "record_id" in data:
                history.setdefault(data["record_id"], []).append((event.type, data))
            if event.type == "record.anchored":
                assert data["record_id"] not in records, (
                    "anchored twice without unanchoring",
                    history[data["record_id"]],
                )
                records[data["record_id"]] = (
                    data["batch_id"],
                    data["tx_hash"],
                    data["block_number"],
                )
                anchored_by_event[event.id] = data["record_id"]
            elif event.type == "record.unanchored":
                record_id = anchored_by_event.pop(data["retracts"])
                assert record_id == data["record_id"]
                del records[record_id]
            elif event.type.startswith("reward.") and event.type != "reward.retracted":
                rewards[event.id] = (event.type, data["points"])
            elif event.type == "reward.retracted":
                assert rewards.pop(data["retracts"])[0] == data["retracted_type"]
    return {"records": records, "rewards": sorted(rewards.values())}


def settled(session_factory: sessionmaker[Session]) -> bool:
    """Every record is in a batch, and every batch is anchored."""
    with session_factory() as session:
        pending = session.scalar(select(Record.pk).where(Record.seq.is_(None)).limit(1))
        unfinished = session.scalar(
            select(Batch.id).where(Batch.status != BatchStatus.ANCHORED.value).limit(1)
        )
        return pending is None and unfinished is None
