"""The chain outbox: journal rows that each become one transaction on chain (anchoring's
batches, loyalty's chain ops) and go through the same durable states, planned → sent → mined.

Exports: `SENT`, `mark_sent`.

A row is written before anything is sent (`batches` status `cut`, `loyalty_chain_ops`
`planned`); `mark_sent` stores the transaction's hash before the worker waits for it to be
mined, so a restart finds the transaction again instead of sending a second one; mining is
recorded by each owner (`anchoring.batches.mark_anchored`, `loyalty.ops.mark_confirmed`), which
store different things about it.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, update
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.db.models import Batch, LoyaltyChainOp, utcnow

#: The status of a row whose transaction was sent and not yet seen mined.
SENT = "sent"


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
        session.execute(
            update(row).where(where).values(status=SENT, tx_hash=tx_hash, sent_at=utcnow())
        )
