"""What the indexed events say on the change feed: the events a new range produces, and the
compensations a rollback appends (see `indexer.store`).

Exports: `REWARD_TYPES`, `prepare_record_events`, `record_events`, `reward_events`,
`retractions`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from crm_ledger.db.models import (
    Batch,
    Customer,
    FeedEvent,
    IndexedBatch,
    IndexedTokenEvent,
    LoyaltyIssuance,
    LoyaltyRedemption,
    LoyaltyWallet,
    Record,
)
from crm_ledger.feed import EventType, NewFeedEvent
from crm_ledger.indexer.events import BatchAnchored, TokenEvent, TokenEventKind
from crm_ledger.ledger.leaf import RecordKind

__all__ = [
    "REWARD_TYPES",
    "prepare_record_events",
    "record_events",
    "retractions",
    "reward_events",
]

#: The token events that have a feed event of their own, and its type.
REWARD_TYPES = {
    TokenEventKind.ISSUED: EventType.REWARD_ISSUED,
    TokenEventKind.REDEEMED: EventType.REWARD_REDEEMED,
    TokenEventKind.EXPIRED: EventType.REWARD_EXPIRED,
}


def prepare_record_events(
    session: Session, batches: Sequence[BatchAnchored], *, epoch: int
) -> dict[BatchAnchored, list[NewFeedEvent]]:
    """`record.anchored` for every record of each of `batches` that matches the journal, by
    batch event, their payloads encoded, before the write transaction that stores them
    (`record_events` takes them then). A journal's batch and its records do not change once
    cut, so what this reads holds at the write.

    A batch whose range or root differs from the journal's produces nothing here: that is
    drift, which reconciliation reports.
    """
    if not batches:
        return {}
    ids = [event.batch_id for event in batches]
    lo, hi = min(ids), max(ids)
    journal = {
        int(batch_id): (int(first_seq), int(count), bytes(root))
        for batch_id, first_seq, count, root in session.execute(
            select(Batch.id, Batch.first_seq, Batch.count, Batch.root).where(
                Batch.id.between(lo, hi)
            )
        ).tuples()
    }
    matched: dict[int, list[BatchAnchored]] = {}
    for event in batches:
        if journal.get(event.batch_id) == (event.first_seq, event.count, event.root):
            matched.setdefault(event.batch_id, []).append(event)
    prepared: dict[BatchAnchored, list[NewFeedEvent]] = {
        event: [] for events in matched.values() for event in events
    }
    if not matched:
        return prepared
    rows = session.execute(
        select(Record.id, Record.seq, Record.kind, Record.batch_id, Customer.id.label("customer"))
        .join(Customer, Customer.pk == Record.customer_pk)
        .where(Record.batch_id.between(min(matched), max(matched)))
        # Access records (reads of personal data) stay out of the feed: see docs/privacy.md.
        .where(Record.kind != int(RecordKind.ACCESS))
        .order_by(Record.seq)
    )
    encode = json.JSONEncoder(separators=(",", ":")).encode
    for row in rows:
        # The same batch logged twice (a rollback's two blocks): ready for either log.
        for batch in matched.get(int(row.batch_id), ()):
            prepared[batch].append(
                NewFeedEvent(
                    type=EventType.RECORD_ANCHORED,
                    customer_id=row.customer,
                    payload=encode(
                        {
                            "record_id": row.id,
                            "customer_id": row.customer,
                            "kind": RecordKind(row.kind).name.lower(),
                            "seq": int(row.seq),
                            "batch_id": batch.batch_id,
                            "epoch": epoch,
                            "ledger_state": "confirmed",
                            **_chain_location(
                                batch.at.tx_hash, batch.at.block_number, batch.at.block_hash
                            ),
                        }
                    ),
                )
            )
    return prepared


def record_events(
    inserted: Sequence[tuple[int, BatchAnchored]],
    prepared: dict[BatchAnchored, list[NewFeedEvent]],
) -> list[NewFeedEvent]:
    """The prepared `record.anchored` events (`prepare_record_events`) of the batch events
    just stored (`inserted`: their rows' pks, which the events point at), in seq order; a
    batch logged twice among them has its records' events once, from its last log that
    matches the journal."""
    last = {batch.batch_id: (pk, batch) for pk, batch in inserted if batch in prepared}
    return [
        replace(event, source_batch_pk=pk)
        for pk, batch in (last[batch_id] for batch_id in sorted(last))
        for event in prepared.get(batch, ())
    ]


def reward_events(
    session: Session, inserted: Sequence[tuple[int, TokenEvent]], *, epoch: int
) -> list[NewFeedEvent]:
    """reward.issued / redeemed / expired for inserted Issued, Redeemed and Expired events."""
    rewards = [(pk, e) for pk, e in inserted if e.kind in REWARD_TYPES]
    if not rewards:
        return []
    addresses = {e.to_address or e.from_address for _, e in rewards} - {None}
    owners = _owners(session, addresses)
    ids = {e.token_id for _, e in rewards if e.token_id is not None}
    public = _public_reward_ids(session, ids)
    events: list[NewFeedEvent] = []
    for pk, event in rewards:
        holder = event.to_address or event.from_address
        customer_id = owners.get(holder) if holder else None
        assert event.token_id is not None
        payload: dict[str, Any] = {
            "customer_id": customer_id,
            "address": holder,
            "points": event.amount,
            "epoch": epoch,
            **_chain_location(event.at.tx_hash, event.at.block_number, event.at.block_hash),
        }
        token_hex = "0x" + event.token_id.hex()
        if event.kind is TokenEventKind.ISSUED:
            assert event.campaign is not None
            payload |= {
                "issuance_id": token_hex,
                "campaign": "0x" + event.campaign.hex(),
                "reward_id": public.get(("issuance", event.token_id)),
            }
        else:
            assert event.reference is not None
            # An expiry burns the remainder of a lot under the lot's own issuance id.
            payload |= {
                "burn_id": token_hex,
                "reference": "0x" + event.reference.hex(),
                "redemption_id": public.get(("redemption", event.token_id)),
                "reward_id": public.get(("issuance", event.token_id))
                if event.kind is TokenEventKind.EXPIRED
                else None,
            }
        events.append(
            NewFeedEvent(
                type=REWARD_TYPES[event.kind],
                customer_id=customer_id,
                source_token_pk=pk,
                payload={k: v for k, v in payload.items() if v is not None or k == "customer_id"},
            )
        )
    return events


def _owners(session: Session, addresses: Iterable[str | None]) -> dict[str, str]:
    """Lower-case address -> customer id, for the addresses that are customers' wallets."""
    wanted = sorted({a for a in addresses if a})
    if not wanted:
        return {}
    rows = session.execute(
        select(func.lower(LoyaltyWallet.address), Customer.id)
        .join(Customer, Customer.pk == LoyaltyWallet.customer_pk)
        .where(func.lower(LoyaltyWallet.address).in_(wanted))
    )
    return {str(address): str(customer) for address, customer in rows}


def _public_reward_ids(session: Session, token_ids: set[bytes]) -> dict[tuple[str, bytes], str]:
    """The loyalty tables' public ids of issuances and redemptions, by their on-chain id."""
    if not token_ids:
        return {}
    wanted = sorted(token_ids)
    found: dict[tuple[str, bytes], str] = {}
    for issuance_id, public_id in session.execute(
        select(LoyaltyIssuance.issuance_id, LoyaltyIssuance.id).where(
            LoyaltyIssuance.issuance_id.in_(wanted)
        )
    ):
        found[("issuance", bytes(issuance_id))] = str(public_id)
    for burn_id, public_id in session.execute(
        select(LoyaltyRedemption.burn_id, LoyaltyRedemption.id).where(
            LoyaltyRedemption.burn_id.in_(wanted)
        )
    ):
        found[("redemption", bytes(burn_id))] = str(public_id)
    return found


def retractions(session: Session, *, from_block: int, reason: str) -> list[NewFeedEvent]:
    """One compensating event per live feed event of the indexed rows being rolled back."""
    out: list[NewFeedEvent] = []
    record_events = session.execute(
        select(FeedEvent.id, FeedEvent.customer_id, FeedEvent.payload, IndexedBatch)
        .join(IndexedBatch, IndexedBatch.pk == FeedEvent.source_batch_pk)
        .where(
            IndexedBatch.block_number >= from_block,
            FeedEvent.type == EventType.RECORD_ANCHORED.value,
        )
        .order_by(FeedEvent.pk)
    )
    for event_id, customer_id, payload, batch in record_events:
        original = _json(payload)
        out.append(
            NewFeedEvent(
                type=EventType.RECORD_UNANCHORED,
                customer_id=customer_id,
                payload={
                    "record_id": original.get("record_id"),
                    "customer_id": customer_id,
                    "seq": original.get("seq"),
                    "batch_id": batch.batch_id,
                    "epoch": batch.epoch,
                    "ledger_state": "pending",
                    "retracts": event_id,
                    "reason": reason,
                    "orphaned_block_number": batch.block_number,
                    "orphaned_block_hash": "0x" + bytes(batch.block_hash).hex(),
                },
            )
        )
    reward_events = session.execute(
        select(
            FeedEvent.id,
            FeedEvent.type,
            FeedEvent.customer_id,
            FeedEvent.payload,
            IndexedTokenEvent,
        )
        .join(IndexedTokenEvent, IndexedTokenEvent.pk == FeedEvent.source_token_pk)
        .where(
            IndexedTokenEvent.block_number >= from_block,
            FeedEvent.type.in_([t.value for t in REWARD_TYPES.values()]),
        )
        .order_by(FeedEvent.pk)
    )
    for event_id, event_type, customer_id, payload, token in reward_events:
        original = _json(payload)
        out.append(
            NewFeedEvent(
                type=EventType.REWARD_RETRACTED,
                customer_id=customer_id,
                payload={
                    "retracts": event_id,
                    "retracted_type": event_type,
                    "customer_id": customer_id,
                    "points": original.get("points"),
                    "issuance_id": original.get("issuance_id"),
                    "burn_id": original.get("burn_id"),
                    "reason": reason,
                    "orphaned_block_number": token.block_number,
                    "orphaned_block_hash": "0x" + bytes(token.block_hash).hex(),
                },
            )
        )
    return out


def _chain_location(tx_hash: bytes, block_number: int, block_hash: bytes) -> dict[str, Any]:
    return {
        "tx_hash": "0x" + tx_hash.hex(),
        "block_number": block_number,
        "block_hash": "0x" + block_hash.hex(),
    }


def _json(payload: str) -> dict[str, Any]:
    loaded = json.loads(payload)
    return loaded if isinstance(loaded, dict) else {}
