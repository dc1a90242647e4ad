"""Database side of the indexer: cursors, recent block hashes, indexed events, rollbacks.

Exports: `Stream`, `Applied`, `RolledBack`, `StaleRange`, `FOLLOWED_CONTRACTS`,
`RECENT_BLOCKS`, `sync_streams`, `tip`, `fork_candidates`, `apply_range`, `roll_back`,
`reset_index`.

Each function is one short transaction; the indexer calls them from a thread. `apply_range`
writes everything one block range yields (the events, their feed events, balances, block hashes
and the advanced cursor) in one commit, so a crash at any instruction leaves either all of it or
none, and the range is read again after a restart. (The indexer stores a range read at once in
parts of at most `events.APPLY_MAX_RECORDS` feed rows, one `apply_range` each, so that one
transaction does not hold SQLite's write lock for long.) Events are keyed by (block hash, log
index), and a range already written is never written twice: `apply_range` skips keys it already
holds.

The feed events a range produces and a rollback's compensations are `indexer.feed_events`'s.

`roll_back(from_block)` undoes exactly what blocks `from_block` and later wrote: it deletes
their indexed events, recomputes the balances they touched from what remains, appends one
compensating feed event per feed event they produced (`record.unanchored`,
`reward.retracted`), forgets their block hashes and moves every cursor back to `from_block`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger import feed
from crm_ledger.db import bulk
from crm_ledger.db.models import (
    Deployment,
    IndexedBalance,
    IndexedBatch,
    IndexedBlock,
    IndexedTokenEvent,
    IndexerStream,
    utcnow,
)
from crm_ledger.db.session import reading
from crm_ledger.feed import NewFeedEvent
from crm_ledger.indexer import feed_events
from crm_ledger.indexer.events import (
    AUDIT_LEDGER_TOPICS,
    LOYALTY_TOKEN_TOPICS,
    BatchAnchored,
    LogLocation,
    TokenEvent,
    TokenEventKind,
)

__all__ = [
    "FOLLOWED_CONTRACTS",
    "RECENT_BLOCKS",
    "Applied",
    "RolledBack",
    "StaleRange",
    "Stream",
    "apply_range",
    "fork_candidates",
    "reset_index",
    "roll_back",
    "sync_streams",
    "tip",
]

LEDGER = "AuditLedger"
TOKEN = "LoyaltyToken"
#: Contract name in `deployments` -> the topic0 values followed for it.
FOLLOWED_CONTRACTS: dict[str, tuple[bytes, ...]] = {
    LEDGER: AUDIT_LEDGER_TOPICS,
    TOKEN: LOYALTY_TOKEN_TOPICS,
}
#: Block hashes kept below the highest indexed block. Deeper reorgs are still found: the fork
#: search also uses the block hash stored with every indexed event.
RECENT_BLOCKS = 64


class StaleRange(Exception):
    """The range no longer fits what the database holds (another writer, or a reorg in
    between): nothing was written; the indexer checks for a reorg and reads again."""


@dataclass(frozen=True, slots=True)
class Stream:
    """The indexer's cursor over the latest deployment of one followed contract."""

    pk: int
    contract: str
    epoch: int
    address: str
    from_block: int
    next_block: int
    chain_id: int
    genesis_hash: bytes
    code_hash: bytes

    @property
    def topics(self) -> tuple[bytes, ...]:
        """topic0 values followed for this contract."""
        return FOLLOWED_CONTRACTS[self.contract]


@dataclass(frozen=True, slots=True)
class Applied:
    """What one range added."""

    batches: int
    token_events: int
    feed_events: int


@dataclass(frozen=True, slots=True)
class RolledBack:
    """What one rollback removed."""

    from_block: int
    batches: int
    token_events: int
    feed_events: int


def sync_streams(session_factory: sessionmaker[Session]) -> list[Stream]:
    """A stream per followed contract that has a deployment (its latest epoch), made if new.

    A new stream starts at its deployment block. Streams of older epochs are left alone: their
    contracts are gone with the chain they lived on.
    """
    with session_factory.begin() as session:
        streams: list[Stream] = []
        for contract in FOLLOWED_CONTRACTS:
            deployment = session.scalars(
                select(Deployment)
                .where(Deployment.contract == contract)
                .order_by(Deployment.epoch.desc())
                .limit(1)
            ).first()
            if deployment is None:
                continue
            row = session.scalars(
                select(IndexerStream).where(
                    IndexerStream.contract == contract, IndexerStream.epoch == deployment.epoch
                )
            ).first()
            if row is None:
                row = IndexerStream(
                    contract=contract,
                    epoch=deployment.epoch,
                    address=deployment.address,
                    from_block=deployment.block_number,
                    next_block=deployment.block_number,
                    updated_at=utcnow(),
                )
                session.add(row)
                session.flush()
            streams.append(
                Stream(
                    pk=row.pk,
                    contract=contract,
                    epoch=row.epoch,
                    address=row.address,
                    from_block=row.from_block,
                    next_block=row.next_block,
                    chain_id=deployment.chain_id,
                    genesis_hash=deployment.genesis_hash,
                    code_hash=deployment.code_hash,
                )
            )
        return streams


def tip(session_factory: sessionmaker[Session]) -> tuple[int, bytes] | None:
    """The highest block whose hash the indexer stored, or None."""
    with reading(session_factory) as session:
        row = session.execute(
            select(IndexedBlock.number, IndexedBlock.hash)
            .order_by(IndexedBlock.number.desc())
            .limit(1)
        ).first()
        return (int(row.number), bytes(row.hash)) if row is not None else None


def fork_candidates(
    session_factory: sessionmaker[Session], *, streams: Sequence[Stream]
) -> list[tuple[int, bytes]]:
    """Every (block number, hash) the indexer holds for the current streams, lowest first.

    The stored recent block hashes, and the block of every indexed event of the streams'
    epochs. On one chain these are all ancestors of each other, so the ones the chain still
    has form a prefix: the fork search bisects this list.
    """
    epochs = {stream.contract: stream.epoch for stream in streams}
    with session_factory() as session:
        found: dict[int, bytes] = {}
        queries: list[Any] = [select(IndexedBlock.number, IndexedBlock.hash)]
        if LEDGER in epochs:
            queries.append(
                select(IndexedBatch.block_number, IndexedBatch.block_hash)
                .where(IndexedBatch.epoch == epochs[LEDGER])
                .distinct()
            )
        if TOKEN in epochs:
            queries.append(
                select(IndexedTokenEvent.block_number, IndexedTokenEvent.block_hash)
                .where(IndexedTokenEvent.epoch == epochs[TOKEN])
                .distinct()
            )
        for query in queries:
            for number, block_hash in session.execute(query):
                found.setdefault(int(number), bytes(block_hash))
        return sorted(found.items())


def apply_range(
    session_factory: sessionmaker[Session],
    *,
    streams: Sequence[Stream],
    from_block: int,
    to_block: int,
    block_hashes: Mapping[int, bytes],
    batches: Sequence[BatchAnchored],
    token_events: Sequence[TokenEvent],
) -> Applied:
    """Store what blocks `from_block`..`to_block` hold for `streams`, and advance them.

    `block_hashes` are the hashes of `to_block` and of every block with an event. Raises
    `StaleRange` (writing nothing) when a stream is no longer at `from_block` or a stored hash
    of one of these blocks differs.
    """
    epochs = {stream.contract: stream.epoch for stream in streams}
    # Worked out before the write: on SQLite the write transaction holds the one write lock
    # the API's commits queue for (inside it, a 2,000-record batch's events took 14-22 ms to
    # read and build, and about half of the append's 20-36 ms to encode).
    prepared: dict[BatchAnchored, list[NewFeedEvent]] = {}
    if batches:
        with reading(session_factory) as session:
            prepared = feed_events.prepare_record_events(session, batches, epoch=epochs[LEDGER])
    with session_factory.begin() as session:
        # Feed positions are taken in lock order: take the lock before anything else.
        feed.lock_feed(session)
        _store_block_hashes(session, block_hashes, to_block=to_block)
        new_feed: list[NewFeedEvent] = []
        added_batches = 0
        if batches:
            inserted = _insert_new(
                session,
                IndexedBatch,
                _BATCH_COLUMNS,
                batches,
                lambda b: _batch_row(b, epochs[LEDGER]),
                from_block=from_block,
                to_block=to_block,
            )
            added_batches = len(inserted)
            new_feed += feed_events.record_events(inserted, prepared)
        added_tokens = 0
        if token_events:
            token_inserted = _insert_new(
                session,
                IndexedTokenEvent,
                _TOKEN_COLUMNS,
                token_events,
                lambda e: _token_row(e, epochs[TOKEN]),
                from_block=from_block,
                to_block=to_block,
            )
            added_tokens = len(token_inserted)
            new_feed += feed_events.reward_events(session, token_inserted, epoch=epochs[TOKEN])
            _add_transfers(session, [event for _, event in token_inserted], epoch=epochs[TOKEN])
        feed.append(session, new_feed)
        for stream in streams:
            moved = session.execute(
                update(IndexerStream)
                .where(IndexerStream.pk == stream.pk, IndexerStream.next_block == from_block)
                .values(next_block=to_block + 1, updated_at=utcnow())
            )
            if getattr(moved, "rowcount", 0) != 1:
                raise StaleRange(
                    f"the {stream.contract} stream is no longer at block {from_block}: "
                    "another indexer is writing to this database"
                )
        return Applied(batches=added_batches, token_events=added_tokens, feed_events=len(new_feed))


def roll_back(
    session_factory: sessionmaker[Session], *, from_block: int, reason: str = "reorg"
) -> RolledBack:
    """Undo everything blocks `from_block` and later wrote (see the module docstring)."""
    with session_factory.begin() as session:
        feed.lock_feed(session)
        compensations = feed_events.retractions(session, from_block=from_block, reason=reason)
        touched = [
            (int(epoch), address)
            for epoch, address in session.execute(
                select(IndexedTokenEvent.epoch, IndexedTokenEvent.to_address)
                .where(
                    IndexedTokenEvent.block_number >= from_block,
                    IndexedTokenEvent.event == TokenEventKind.TRANSFER.value,
                    IndexedTokenEvent.to_address.is_not(None),
                )
                .union(
                    select(IndexedTokenEvent.epoch, IndexedTokenEvent.from_address).where(
                        IndexedTokenEvent.block_number >= from_block,
                        IndexedTokenEvent.event == TokenEventKind.TRANSFER.value,
                        IndexedTokenEvent.from_address.is_not(None),
                    )
                )
            )
        ]
        batches = session.execute(
            delete(IndexedBatch).where(IndexedBatch.block_number >= from_block)
        )
        tokens = session.execute(
            delete(IndexedTokenEvent).where(IndexedTokenEvent.block_number >= from_block)
        )
        _recompute_balances(session, touched)
        session.execute(delete(IndexedBlock).where(IndexedBlock.number >= from_block))
        session.execute(
            update(IndexerStream)
            .where(IndexerStream.next_block > from_block)
            .values(
                next_block=_greatest(session, IndexerStream.from_block, from_block),
                updated_at=utcnow(),
            )
        )
        feed.append(session, compensations)
        return RolledBack(
            from_block=from_block,
            batches=int(getattr(batches, "rowcount", 0)),
            token_events=int(getattr(tokens, "rowcount", 0)),
            feed_events=len(compensations),
        )


def reset_index(session_factory: sessionmaker[Session]) -> RolledBack:
    """Roll back everything the indexer wrote: the next run re-indexes from the deployments."""
    return roll_back(session_factory, from_block=0, reason="reindex")


# Internals ------------------------------------------------------------------------------------


def _greatest(session: Session, column: Any, value: int) -> Any:
    """SQL max(column, value) of two values (GREATEST on PostgreSQL, max() on SQLite)."""
    if session.get_bind().dialect.name == "postgresql":
        return func.greatest(column, value)
    return func.max(column, value)


def _store_block_hashes(session: Session, hashes: Mapping[int, bytes], *, to_block: int) -> None:
    if not hashes:
        return
    stored = {
        int(number): bytes(block_hash)
        for number, block_hash in session.execute(
            select(IndexedBlock.number, IndexedBlock.hash).where(
                IndexedBlock.number.in_(list(hashes))
            )
        ).tuples()
    }
    for number, block_hash in hashes.items():
        if number in stored and bytes(stored[number]) != block_hash:
            raise StaleRange(f"block {number} has another hash than when it was indexed")
    fresh = [
        {"number": number, "hash": block_hash}
        for number, block_hash in sorted(hashes.items())
        if number not in stored
    ]
    if fresh:
        session.execute(insert(IndexedBlock), fresh)
    highest = session.scalar(select(func.max(IndexedBlock.number)))
    if highest is not None and int(highest) <= to_block:
        session.execute(delete(IndexedBlock).where(IndexedBlock.number <= to_block - RECENT_BLOCKS))


#: The tables of indexed events, keyed by (block hash, log index).
_IndexedModel = type[IndexedBatch] | type[IndexedTokenEvent]


def _existing_keys(
    session: Session, model: _IndexedModel, lo: int, hi: int
) -> set[tuple[bytes, int]]:
    rows = session.execute(
        select(model.block_hash, model.log_index).where(model.block_number.between(lo, hi))
    )
    return {(bytes(block_hash), int(log_index)) for block_hash, log_index in rows}


_BATCH_COLUMNS = (
    "epoch",
    "batch_id",
    "first_seq",
    "count",
    "root",
    "head",
    "tx_hash",
    "block_number",
    "block_hash",
    "log_index",
    "indexed_at",
)
_TOKEN_COLUMNS = (
    "epoch",
    "event",
    "token_id",
    "campaign",
    "reference",
    "from_address",
    "to_address",
    "amount",
    "tx_hash",
    "block_number",
    "block_hash",
    "log_index",
    "indexed_at",
)


def _last_pk(session: Session, model: _IndexedModel) -> int:
    return int(session.scalar(select(func.max(model.pk))) or 0)


def _pks_after(session: Session, model: _IndexedModel, last: int, count: int) -> list[int]:
    """The pks of the `count` rows just inserted after pk `last`, in insertion order.

    The indexer is the only writer of these tables (it runs beside the anchorer, under its
    singleton lock), so within its transaction the rows above `last` are exactly its own: a
    cheaper way back to them than RETURNING row by row.
    """
    pks = [
        int(pk)
        for pk in session.scalars(select(model.pk).where(model.pk > last).order_by(model.pk))
    ]
    if len(pks) != count:
        raise StaleRange(f"{model.__tablename__} has rows this indexer did not write")
    return pks


class _Logged(Protocol):
    """An event of the chain's logs: where it is, the key it is stored under."""

    @property
    def at(self) -> LogLocation: ...


_Event = TypeVar("_Event", bound=_Logged)


def _insert_new(
    session: Session,
    model: _IndexedModel,
    columns: Sequence[str],
    events: Sequence[_Event],
    row: Callable[[_Event], tuple[Any, ...]],
    *,
    from_block: int,
    to_block: int,
) -> list[tuple[int, _Event]]:
    """Insert the `events` of blocks `from_block`..`to_block` not stored yet, each as
    `row(event)` plus the time; (pk, event) of each inserted one."""
    existing = _existing_keys(session, model, from_block, to_block)
    fresh = [event for event in events if (event.at.block_hash, event.at.log_index) not in existing]
    if not fresh:
        return []
    now = bulk.processed_now(session)
    last = _last_pk(session, model)
    rows: list[tuple[Any, ...]] = [(*row(event), now) for event in fresh]
    bulk.insert_rows(session, model.__tablename__, columns, rows)
    return list(zip(_pks_after(session, model, last, len(fresh)), fresh, strict=True))


def _batch_row(b: BatchAnchored, epoch: int) -> tuple[Any, ...]:
    """`_BATCH_COLUMNS` but the time."""
    at = b.at
    return (
        epoch,
        b.batch_id,
        b.first_seq,
        b.count,
        b.root,
        b.head,
        at.tx_hash,
        at.block_number,
        at.block_hash,
        at.log_index,
    )


def _token_row(e: TokenEvent, epoch: int) -> tuple[Any, ...]:
    """`_TOKEN_COLUMNS` but the time."""
    at = e.at
    return (
        epoch,
        e.kind.value,
        e.token_id,
        e.campaign,
        e.reference,
        e.from_address,
        e.to_address,
        e.amount,
        at.tx_hash,
        at.block_number,
        at.block_hash,
        at.log_index,
    )


def _add_transfers(session: Session, events: Sequence[TokenEvent], *, epoch: int) -> None:
    """Apply the inserted `Transfer` events to `indexed_balances`."""
    deltas: dict[str, int] = defaultdict(int)
    last_block: dict[str, int] = {}
    for event in events:
        if event.kind is not TokenEventKind.TRANSFER:
            continue
        for address, sign in ((event.to_address, 1), (event.from_address, -1)):
            if address is not None:
                deltas[address] += sign * event.amount
                last_block[address] = max(last_block.get(address, 0), event.at.block_number)
    if not deltas:
        return
    current = {
        str(address): int(balance)
        for address, balance in session.execute(
            select(IndexedBalance.address, IndexedBalance.balance).where(
                IndexedBalance.epoch == epoch, IndexedBalance.address.in_(sorted(deltas))
            )
        )
    }
    rows = [
        {
            "epoch": epoch,
            "address": address,
            "balance": current.get(address, 0) + delta,
            "block_number": last_block[address],
        }
        for address, delta in deltas.items()
    ]
    updates = [row for row in rows if row["address"] in current]
    if updates:
        # ORM bulk UPDATE by primary key: one executemany.
        session.execute(update(IndexedBalance), updates)
    fresh = [row for row in rows if row["address"] not in current]
    if fresh:
        session.execute(insert(IndexedBalance), fresh)


def _recompute_balances(session: Session, touched: Sequence[tuple[int, str]]) -> None:
    """Balances of `touched` holders from the `Transfer` events that remain."""
    for epoch, address in sorted(set(touched)):
        transfers = and_(
            IndexedTokenEvent.epoch == epoch,
            IndexedTokenEvent.event == TokenEventKind.TRANSFER.value,
        )
        received, last_in = session.execute(
            select(
                func.sum(IndexedTokenEvent.amount), func.max(IndexedTokenEvent.block_number)
            ).where(transfers, IndexedTokenEvent.to_address == address)
        ).one()
        sent, last_out = session.execute(
            select(
                func.sum(IndexedTokenEvent.amount), func.max(IndexedTokenEvent.block_number)
            ).where(transfers, IndexedTokenEvent.from_address == address)
        ).one()
        key = and_(IndexedBalance.epoch == epoch, IndexedBalance.address == address)
        if last_in is None and last_out is None:
            session.execute(delete(IndexedBalance).where(key))
            continue
        session.execute(
            update(IndexedBalance)
            .where(key)
            .values(
                balance=int(received or 0) - int(sent or 0),
                block_number=max(int(last_in or 0), int(last_out or 0)),
            )
        )
