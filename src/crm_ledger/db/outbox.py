"""The chain outbox: journal rows that each become one transaction on chain (anchoring's
batches, loyalty's chain ops) and go through the same durable states, planned → sent → mined.

Exports: `SENT`, `UNSENT`, `mark_sent`, `mark_sent_in`.

A row is written before anything is sent (`batches` status `cut`, `loyalty_chain_ops`
`planned`); `mark_sent` (or `mark_sent_in`, inside the owner's own transaction) stores the
transaction's hash before the worker waits for it to be mined, so a restart finds the
transaction again instead of sending a second one; mining is recorded by each owner
(`anchoring.batches.record_progress`, `loyalty.ops.mark_confirmed`), which store different
things about it. A rollback or a chain reset takes the transaction away: the row
forgets it (`UNSENT`) and waits to be sent again.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import ColumnElement, update
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.db.models import Batch, LoyaltyChainOp, utcnow

#: The status of a row whose transaction was sent and not yet seen mined.
SENT = "sent"
#: The columns a row forgets with its transaction (besides its status and its own times).
UNSENT: Mapping[str, None] = {
    "tx_hash": None,
    "block_number": None,
    "block_hash": None,
    "gas_used": None,
    "sent_at": None,
}


def mark_sent(
    session_factory: sessionmaker[Session],
    row: type[Batch] | type[LoyaltyChainOp],
    where: ColumnElement[bool],
    *,
    tx_hash: bytes,
) -> None:
    """Remember the transaction that carries the `row` (a model) `where` selects, before
    waiting for it to be mined."""
    with session_factory() as session, session.begin():
        mark_sent_in(session, row, where, tx_hash=tx_hash)


def mark_sent_in(
    session: Session,
    row: type[Batch] | type[LoyaltyChainOp],
    where: ColumnElement[bool],
    *,
    tx_hash: bytes,
) -> None:
    """`mark_sent` inside the caller's transaction (with what else it writes)."""
    session.execute(update(row).where(where).values(status=SENT, tx_hash=tx_hash, sent_at=utcnow()))
