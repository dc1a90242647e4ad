"""Reconciliation: the journal and the loyalty tables against what the chain says.

Exports: `DriftKind`, `DriftItem`, `ReconciliationResult`, `ChainReader`, `SourceReader`,
`Reconciler`, `latest_report`, `request_run`, `TRIGGER_API`, `TRIGGER_SCHEDULE`.

What is compared, and what is done about each kind of drift:

- `batch_root_differs`: an indexed BatchAnchored has another range or root than the journal
  batch of that id. Never repaired: evidence of tampering.
- `batch_unknown_to_database`: an indexed BatchAnchored has no journal batch. Never repaired:
  the journal lost it, or another key anchors on this ledger.
- `batch_missing_on_chain`: a journal batch marked anchored in a block the indexer has passed
  has no event, and the ledger's `nextSeq()` is at or below its first seq. Repaired: it and
  every later batch go back to `cut` and are anchored again with the same seqs and roots.
- `issuance_missing_on_chain`: a lot marked issued in a block the indexer has passed has no
  Issued event, and `issued(id)` is false. Repaired: its loyalty op is planned again
  (`resend_op`, which is `loyalty.ops.reset_op`); the loyalty worker re-sends it, and
  `issueBatch` skips ids already used.
- `balance_differs`: a settled holder's `balanceOf` differs from the view's indexed balance or
  from what the lots, redemptions and expiries in the database add up to. The view takes the
  chain's balance; lots that disagree with the chain are reported, not rewritten.

"Never repaired" is deliberate: rewriting either side would erase the evidence. Those items are
logged as errors, counted in `crm_ledger_drift_items`, and a `drift.detected` feed event is
appended the first time each appears (every kind gets one, once per appearance).

Runs are stored in `reconciliation_reports` (`indexer.drift` holds the items, results and
reports). The indexer runs one every `reconcile_interval_seconds` once it has caught up;
`POST /v1/crm/reconciliation` runs one at once in the process that runs the indexer, or leaves
a `requested` row that the indexer picks up.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger import feed, metrics
from crm_ledger.anchoring import batches as anchoring_batches
from crm_ledger.db.models import (
    Batch,
    BatchStatus,
    Customer,
    IndexedBalance,
    IndexedBatch,
    IndexedTokenEvent,
    IndexerStream,
    LoyaltyExpiration,
    LoyaltyIssuance,
    LoyaltyRedemption,
    LoyaltyWallet,
    ReconciliationReport,
    new_id,
    utcnow,
)
from crm_ledger.feed import EventType, NewFeedEvent
from crm_ledger.indexer.drift import (
    DONE,
    FAILED,
    REQUESTED,
    RUNNING,
    TRIGGER_API,
    TRIGGER_SCHEDULE,
    DriftItem,
    DriftKind,
    ReconciliationResult,
    latest_report,
    request_run,
)
from crm_ledger.indexer.source import ChainReader, SourceReader

__all__ = [
    "TRIGGER_API",
    "TRIGGER_SCHEDULE",
    "ChainReader",
    "DriftItem",
    "DriftKind",
    "Reconciler",
    "ReconciliationResult",
    "SourceReader",
    "latest_report",
    "request_run",
]

log = logging.getLogger(__name__)

LEDGER = "AuditLedger"
TOKEN = "LoyaltyToken"
_ISSUED_EVENT = "issued"
_TRANSFER_EVENT = "transfer"


@dataclass(frozen=True, slots=True)
class _StreamView:
    epoch: int
    address: str
    indexed_through: int


#: Plans a loyalty op again so the loyalty worker re-sends it (`loyalty.ops.reset_op`).
ResendOp = Callable[..., None]


class Reconciler:
    """Runs reconciliations one at a time and stores them; see the module docstring.

    `resend_op(session_factory, op_pk=...)` is the loyalty worker's way to send an op again;
    without it a missing issuance is reported but not repaired.
    """

    def __init__(
        self,
        *,
        session_factory: sessionmaker[Session],
        chain: ChainReader,
        resend_op: ResendOp | None = None,
    ) -> None:
        self.session_factory = session_factory
        self.chain = chain
        self.resend_op = resend_op
        self._lock = asyncio.Lock()

    async def run(self, *, trigger: str, report_id: str | None = None) -> dict[str, Any]:
        """Run now (after any run in progress) and return the stored report's JSON.

        With `report_id`, runs that requested run, unless another run already claimed it:
        then its report is returned as it stands.
        """
        async with self._lock:
            claimed = await asyncio.to_thread(self._start, trigger, report_id)
            if claimed is None:
                assert report_id is not None
                current = await asyncio.to_thread(
                    latest_report, self.session_factory, report_id=report_id
                )
                assert current is not None
                return current
            report_id = claimed
            try:
                result = await self._reconcile()
            except BaseException as exc:
                await asyncio.to_thread(self._fail, report_id, str(exc) or type(exc).__name__)
                raise
            await asyncio.to_thread(self._finish, report_id, result)
        found = await asyncio.to_thread(latest_report, self.session_factory, report_id=report_id)
        assert found is not None
        return found

    async def run_requested(self) -> int:
        """Run every report someone requested (`POST` in a process without the indexer)."""
        pending = await asyncio.to_thread(self._requested)
        for report_id in pending:
            await self.run(trigger=TRIGGER_API, report_id=report_id)
        return len(pending)

    # Comparisons ---------------------------------------------------------------------------

    async def _reconcile(self) -> ReconciliationResult:
        result = ReconciliationResult()
        streams = await asyncio.to_thread(self._streams)
        ledger, token = streams.get(LEDGER), streams.get(TOKEN)
        if ledger is not None:
            result.chain["audit_ledger"] = {
                "epoch": ledger.epoch,
                "address": ledger.address,
                "indexed_through_block": ledger.indexed_through,
            }
            await self._batches(result, ledger)
        if token is not None:
            result.chain["loyalty_token"] = {
                "epoch": token.epoch,
                "address": token.address,
                "indexed_through_block": token.indexed_through,
            }
            await self._issuances(result, token)
            await self._balances(result, token)
        previous = await asyncio.to_thread(self._previous_keys)
        await asyncio.to_thread(self._announce, result, previous)
        return result

    async def _batches(self, result: ReconciliationResult, ledger: _StreamView) -> None:
        journal, chain = await asyncio.to_thread(self._batch_rows, ledger)
        result.checked["journal_batches"] = len(journal)
        result.checked["chain_batches"] = len(chain)
        for batch_id, (first_seq, count, root, block) in sorted(chain.items()):
            ours = journal.get(batch_id)
            if ours is None:
                result.items.append(
                    DriftItem(
                        kind=DriftKind.BATCH_UNKNOWN_TO_DATABASE,
                        subject={"batch_id": batch_id},
                        detail=f"the chain holds batch {batch_id} (seqs {first_seq}.."
                        f"{first_seq + count - 1}, root 0x{root.hex()}, block {block}) and the "
                        "journal has no such batch: the database lost it, or another key "
                        "anchors on this ledger",
                    )
                )
            elif (ours[0], ours[1], ours[2]) != (first_seq, count, root):
                result.items.append(
                    DriftItem(
                        kind=DriftKind.BATCH_ROOT_DIFFERS,
                        subject={"batch_id": batch_id},
                        detail=f"batch {batch_id} on chain is seqs {first_seq}.."
                        f"{first_seq + count - 1} with root 0x{root.hex()} (block {block}); the "
                        f"journal says seqs {ours[0]}..{ours[0] + ours[1] - 1} with root "
                        f"0x{ours[2].hex()}: the journal or the chain was altered",
                    )
                )
        unseen = sorted(
            (batch_id, row)
            for batch_id, row in journal.items()
            if row[3] == BatchStatus.ANCHORED.value
            and row[4] == ledger.epoch
            and row[5] is not None
            and row[5] <= ledger.indexed_through
            and batch_id not in chain
        )
        if not unseen:
            return
        next_seq = await self.chain.ledger_next_seq(ledger.address)
        result.chain["audit_ledger"]["next_seq"] = next_seq
        missing = [(batch_id, row) for batch_id, row in unseen if next_seq <= row[0]]
        if not missing:
            # The chain has them: the index has not reached their new block yet (a reorg
            # moved them). Not drift.
            return
        first_seq = min(row[0] for _, row in missing)
        reset = await asyncio.to_thread(
            anchoring_batches.reset_batches_from, self.session_factory, first_seq=first_seq
        )
        for batch_id, row in missing:
            result.items.append(
                DriftItem(
                    kind=DriftKind.BATCH_MISSING_ON_CHAIN,
                    subject={"batch_id": batch_id},
                    detail=f"the journal has batch {batch_id} (seqs {row[0]}.."
                    f"{row[0] + row[1] - 1}) anchored in block {row[5]}, but the chain has no "
                    f"such event and its next seq is {next_seq}",
                    repaired=batch_id in reset,
                    repair=f"batches {reset[0]}..{reset[-1]} put back to `cut`: the anchorer "
                    "anchors them again with the same seqs and roots"
                    if reset
                    else None,
                )
            )

    async def _issuances(self, result: ReconciliationResult, token: _StreamView) -> None:
        unseen = await asyncio.to_thread(self._unseen_issuances, token)
        result.checked["issued_lots_unseen_on_chain"] = len(unseen)
        missing: dict[int, list[tuple[str, bytes]]] = defaultdict(list)
        for lot_id, issuance_id, op_pk in unseen:
            if not await self.chain.token_issued(token.address, issuance_id):
                missing[op_pk].append((lot_id, issuance_id))
        for op_pk, lots in sorted(missing.items()):
            if self.resend_op is not None:
                await asyncio.to_thread(self.resend_op, self.session_factory, op_pk=op_pk)
            for lot_id, issuance_id in lots:
                result.items.append(
                    DriftItem(
                        kind=DriftKind.ISSUANCE_MISSING_ON_CHAIN,
                        subject={"issuance_id": "0x" + issuance_id.hex()},
                        detail=f"lot {lot_id} is marked issued, but the chain has no Issued "
                        f"event for 0x{issuance_id.hex()} and issued(id) is false",
                        repaired=self.resend_op is not None,
                        repair=f"loyalty op {op_pk} planned again: the loyalty worker re-sends "
                        "it (issueBatch skips ids already used)"
                        if self.resend_op is not None
                        else None,
                    )
                )

    async def _balances(self, result: ReconciliationResult, token: _StreamView) -> None:
        settled = await asyncio.to_thread(self._settled_balances, token)
        result.checked["settled_holders"] = len(settled)
        for customer_id, address, expected, indexed in settled:
            if expected == indexed:
                continue
            on_chain = await self.chain.token_balance(token.address, address)
            if indexed != on_chain:
                await asyncio.to_thread(self._take_balance, token, address, on_chain)
            view = f"the view had {indexed}" + (
                f", now set to the chain's {on_chain}" if indexed != on_chain else ""
            )
            result.items.append(
                DriftItem(
                    kind=DriftKind.BALANCE_DIFFERS,
                    subject={"customer_id": customer_id, "address": address},
                    detail=f"balanceOf({address}) is {on_chain}; {view}; the lots, redemptions "
                    f"and expiries in the database add up to {expected}",
                    # Only the view can be repaired; lots that disagree with the chain are
                    # the loyalty journal's evidence and stay as they are.
                    repaired=expected == on_chain,
                    repair="the view's balance set to the chain's" if indexed != on_chain else None,
                )
            )

    # Database ------------------------------------------------------------------------------

    def _streams(self) -> dict[str, _StreamView]:
        with self.session_factory() as session:
            out: dict[str, _StreamView] = {}
            rows = session.scalars(select(IndexerStream).order_by(IndexerStream.epoch))
            for row in rows:
                out[row.contract] = _StreamView(
                    epoch=row.epoch, address=row.address, indexed_through=row.next_block - 1
                )
            return out

    def _batch_rows(
        self, ledger: _StreamView
    ) -> tuple[
        dict[int, tuple[int, int, bytes, str, int | None, int | None]],
        dict[int, tuple[int, int, bytes, int]],
    ]:
        with self.session_factory() as session:
            journal = {
                int(batch_id): (
                    int(first_seq),
                    int(count),
                    bytes(root),
                    str(status),
                    epoch,
                    block,
                )
                for batch_id, first_seq, count, root, status, epoch, block in session.execute(
                    select(
                        Batch.id,
                        Batch.first_seq,
                        Batch.count,
                        Batch.root,
                        Batch.status,
                        Batch.epoch,
                        Batch.block_number,
                    )
                ).tuples()
            }
            chain = {
                int(batch_id): (int(first_seq), int(count), bytes(root), int(block_number))
                for batch_id, first_seq, count, root, block_number in session.execute(
                    select(
                        IndexedBatch.batch_id,
                        IndexedBatch.first_seq,
                        IndexedBatch.count,
                        IndexedBatch.root,
                        IndexedBatch.block_number,
                    ).where(IndexedBatch.epoch == ledger.epoch)
                ).tuples()
            }
            return journal, chain

    def _unseen_issuances(self, token: _StreamView) -> list[tuple[str, bytes, int]]:
        """(lot id, issuance id, op pk) of issued lots the index should have and has not."""
        with self.session_factory() as session:
            seen = (
                select(IndexedTokenEvent.pk)
                .where(
                    IndexedTokenEvent.epoch == token.epoch,
                    IndexedTokenEvent.event == _ISSUED_EVENT,
                    IndexedTokenEvent.token_id == LoyaltyIssuance.issuance_id,
                )
                .exists()
            )
            rows = session.execute(
                select(LoyaltyIssuance.id, LoyaltyIssuance.issuance_id, LoyaltyIssuance.op_pk)
                .where(
                    LoyaltyIssuance.status == "issued",
                    LoyaltyIssuance.op_pk.is_not(None),
                    LoyaltyIssuance.block_number.is_not(None),
                    LoyaltyIssuance.block_number <= token.indexed_through,
                    ~seen,
                )
                .order_by(LoyaltyIssuance.pk)
            )
            return [(str(a), bytes(b), int(c)) for a, b, c in rows]

    def _settled_balances(self, token: _StreamView) -> list[tuple[str, str, int, int]]:
        """(customer id, address, balance by the lots, indexed balance) of settled holders.

        Settled: nothing of theirs is in a transaction that may or may not be mined, and the
        indexer has passed every block their lots, redemptions and expiries were mined in.
        """
        with self.session_factory() as session:
            per_customer: dict[int, dict[str, Any]] = defaultdict(
                lambda: {"expected": 0, "unsettled": False}
            )
            lots = session.execute(
                select(
                    LoyaltyIssuance.customer_pk,
                    LoyaltyIssuance.status,
                    LoyaltyIssuance.op_pk,
                    LoyaltyIssuance.points,
                    LoyaltyIssuance.block_number,
                )
            )
            burns = [
                session.execute(
                    select(
                        model.customer_pk,
                        model.status,
                        model.op_pk,
                        model.points,
                        model.block_number,
                    )
                ).tuples()
                for model in (LoyaltyRedemption, LoyaltyExpiration)
            ]
            final_add = {"issued"}
            final_sub = {"redeemed", "expired"}
            for source, rows in (("lot", lots.tuples()), ("burn", burns[0]), ("burn", burns[1])):
                for customer_pk, status, op_pk, points, block in rows:
                    entry = per_customer[int(customer_pk)]
                    if (source == "lot" and status in final_add) or (
                        source == "burn" and status in final_sub
                    ):
                        entry["expected"] += int(points) * (1 if source == "lot" else -1)
                        if block is None or int(block) > token.indexed_through:
                            entry["unsettled"] = True
                    elif status != "failed" and op_pk is not None:
                        entry["unsettled"] = True
            wallets = session.execute(
                select(LoyaltyWallet.customer_pk, LoyaltyWallet.address, Customer.id).join(
                    Customer, Customer.pk == LoyaltyWallet.customer_pk
                )
            ).tuples()
            indexed = {
                str(address): int(balance)
                for address, balance in session.execute(
                    select(IndexedBalance.address, IndexedBalance.balance).where(
                        IndexedBalance.epoch == token.epoch
                    )
                ).tuples()
            }
            out = []
            for customer_pk, address, customer_id in wallets:
                totals = per_customer.get(int(customer_pk))
                if totals is None or totals["unsettled"]:
                    continue
                holder = str(address).lower()
                out.append(
                    (str(customer_id), holder, int(totals["expected"]), indexed.get(holder, 0))
                )
            return out

    def _take_balance(self, token: _StreamView, address: str, balance: int) -> None:
        with self.session_factory.begin() as session:
            key = and_(IndexedBalance.epoch == token.epoch, IndexedBalance.address == address)
            if session.scalar(select(func.count()).select_from(IndexedBalance).where(key)):
                session.execute(update(IndexedBalance).where(key).values(balance=balance))
            else:
                session.add(
                    IndexedBalance(
                        epoch=token.epoch,
                        address=address,
                        balance=balance,
                        block_number=token.indexed_through,
                    )
                )

    def _previous_keys(self) -> set[str]:
        with self.session_factory() as session:
            report = session.scalar(
                select(ReconciliationReport.report)
                .where(ReconciliationReport.status == DONE)
                .order_by(ReconciliationReport.pk.desc())
                .limit(1)
            )
        if report is None:
            return set()
        items = json.loads(report).get("items", [])
        return {
            f"{item['kind']}:{json.dumps(item['subject'], sort_keys=True)}"
            for item in items
            if not item.get("repaired")
        }

    def _announce(self, result: ReconciliationResult, previous: set[str]) -> None:
        """Log, count and append `drift.detected` for what is new since the last run."""
        counts: dict[str, int] = defaultdict(int)
        fresh: list[NewFeedEvent] = []
        for item in result.items:
            counts[item.kind.value] += 1
            if item.evidence:
                log.error("ledger drift (evidence, not repaired): %s", item.detail)
            elif item.repaired:
                log.warning("ledger drift repaired: %s; %s", item.detail, item.repair)
            else:
                log.error("ledger drift: %s", item.detail)
            if item.key in previous:
                continue
            metrics.drift_detected_total.labels(item.kind.value).inc()
            fresh.append(
                NewFeedEvent(
                    type=EventType.DRIFT_DETECTED,
                    customer_id=item.subject.get("customer_id"),
                    payload=item.to_json(),
                )
            )
        for kind in DriftKind:
            metrics.drift_items.labels(kind.value).set(counts.get(kind.value, 0))
        if fresh:
            with self.session_factory.begin() as session:
                feed.append(session, fresh)

    def _start(self, trigger: str, report_id: str | None) -> str | None:
        """Mark a run running: a new one, or the requested `report_id` if still unclaimed."""
        with self.session_factory.begin() as session:
            if report_id is not None:
                claimed = session.execute(
                    update(ReconciliationReport)
                    .where(
                        ReconciliationReport.id == report_id,
                        ReconciliationReport.status == REQUESTED,
                    )
                    .values(status=RUNNING, started_at=utcnow())
                )
                return report_id if getattr(claimed, "rowcount", 0) == 1 else None
            report_id = new_id()
            now = utcnow()
            session.execute(
                insert(ReconciliationReport).values(
                    id=report_id,
                    status=RUNNING,
                    trigger=trigger,
                    requested_at=now,
                    started_at=now,
                    drift_count=0,
                    repaired_count=0,
                )
            )
            return report_id

    def _finish(self, report_id: str, result: ReconciliationResult) -> None:
        with self.session_factory.begin() as session:
            session.execute(
                update(ReconciliationReport)
                .where(ReconciliationReport.id == report_id)
                .values(
                    status=DONE,
                    finished_at=utcnow(),
                    drift_count=result.drift_count,
                    repaired_count=result.repaired_count,
                    report=json.dumps(result.to_json()),
                )
            )

    def _fail(self, report_id: str, error: str) -> None:
        with self.session_factory.begin() as session:
            session.execute(
                update(ReconciliationReport)
                .where(ReconciliationReport.id == report_id)
                .values(status=FAILED, finished_at=utcnow(), error=error[:2000])
            )

    def _requested(self) -> list[str]:
        with self.session_factory() as session:
            return list(
                session.scalars(
                    select(ReconciliationReport.id)
                    .where(ReconciliationReport.status == REQUESTED)
                    .order_by(ReconciliationReport.pk)
                )
            )
