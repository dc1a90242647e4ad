"""A background worker's poll only reads: on SQLite it must not queue for (or hold) the write
lock the API's writers need. Each poll here runs while the test holds the write queue; one that
began a write transaction would wait for it (30 s) instead of answering at once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.anchoring import batches
from crm_ledger.db.session import write_queue
from crm_ledger.indexer import store
from crm_ledger.loyalty import ops
from crm_ledger.loyalty.earning import plan_earnings
from crm_ledger.loyalty.wallets import WalletKeyring

#: The well-known development mnemonic (chain 31337's accounts); no lot is cut with it here.
KEYRING = WalletKeyring.from_secret(
    SecretStr("test test test test test test test test test test test junk")
)
POLLS: dict[str, Callable[[sessionmaker[Session]], Any]] = {
    "anchorer: unfinished batches": batches.unfinished_batches,
    "anchorer: anchored end": batches.anchored_end,
    "anchorer: recent batches": lambda s: batches.recent_anchored_batches(s, limit=16),
    "anchorer: last batch": batches.last_anchored_batch_id,
    "anchorer: pending records": lambda s: batches.pending_summary(s, limit=100),
    "loyalty: unfinished ops": ops.unfinished_ops,
    "loyalty: budgets": ops.budgets_to_sync,
    "loyalty: earnings with nothing new": plan_earnings,
    "loyalty: issue cut with no planned lot": lambda s: ops.cut_issue_ops(
        s, KEYRING, max_entries=10
    ),
    "loyalty: redeem cut with no pending redemption": ops.cut_redeem_ops,
    "indexer: stored tip": store.tip,
}


@pytest.mark.parametrize("poll", POLLS.values(), ids=POLLS.keys())
def test_a_poll_answers_while_a_writer_holds_the_write_lock(
    engine: Engine, session_factory: sessionmaker[Session], poll: Callable[..., Any]
) -> None:
    queue = write_queue(engine)
    if queue is None:
        pytest.skip("PostgreSQL has no write queue: readers never wait for writers there")
    assert queue.acquire(1.0)
    try:
        answered: list[Any] = []
        thread = threading.Thread(target=lambda: answered.append(poll(session_factory)))
        thread.daemon = True
        thread.start()
        thread.join(10)
        assert answered, "the poll waited for the write lock"
    finally:
        queue.release()
