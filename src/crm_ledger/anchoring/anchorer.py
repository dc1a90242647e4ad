"""The anchorer: moves the journal onto the chain, one Merkle batch per transaction.

Exports: `Anchorer`, `AnchorChain`, `DeploymentRef`, `AnchorerStats`.

The journal is the outbox. A batch goes through three durable states, and a restart at any
instruction resumes from whichever one the database holds:

    cut       seqs assigned, root and head computed, nothing sent yet
    sent      a transaction hash is recorded; it may or may not be mined
    anchored  the chain holds the batch at a known transaction and block

Before sending, the anchorer asks the contract for `nextSeq()`. If the chain is already past the
batch, the batch got there before a crash and only its location is missing: it is looked up in
the `BatchAnchored` events instead of being sent again. The contract itself rejects any batch
whose first seq is not the next one, so no seq can be anchored twice even if two transactions
race. When the chain's `nextSeq()` falls behind what the journal calls anchored, the chain rolled
back: those batches go back to `cut` and are anchored again, with the same seqs, roots and heads.

Example (`anchoring.worker.AnchoringWorker` does this once connected; the supervisor then
calls `step()` over and over, backing off on `ChainUnavailable` and halting on `ChainReset`)::

    anchorer = Anchorer(
        session_factory=session_factory,
        chain=ledger_chain,
        deployment=DeploymentRef(epoch=1, address=addr, code_hash=code_hash, block_number=7),
        settings=settings,
    )
    anchored = await anchorer.step()
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar, Protocol

from sqlalchemy.orm import Session, sessionmaker

from crm_ledger import metrics
from crm_ledger.anchoring import batches
from crm_ledger.anchoring.batches import BatchPlan
from crm_ledger.config import Settings
from crm_ledger.db.models import BatchStatus, utcnow
from crm_ledger.errors import AnchorRejected, ChainReset, ChainUnavailable
from crm_ledger.workers.lock import ANCHORER

log = logging.getLogger(__name__)


class AnchorReceiptLike(Protocol):
    """Where a mined anchor transaction landed."""

    @property
    def tx_hash(self) -> bytes: ...
    @property
    def block_number(self) -> int: ...
    @property
    def block_hash(self) -> bytes: ...
    @property
    def gas_used(self) -> int: ...


class BatchEventLike(AnchorReceiptLike, Protocol):
    """A `BatchAnchored` event with its location."""

    @property
    def first_seq(self) -> int: ...
    @property
    def count(self) -> int: ...
    @property
    def root(self) -> bytes: ...


class AnchorChain(Protocol):
    """What the anchorer needs from the chain; `chain.client.LedgerChain` is the real one."""

    async def code_hash(self, address: str) -> bytes: ...
    async def next_seq(self) -> int: ...
    async def block_hash(self, number: int) -> bytes | None: ...
    async def send_anchor(self, first_seq: int, count: int, root: bytes) -> bytes: ...
    async def receipt(self, tx_hash: bytes) -> AnchorReceiptLike | None: ...
    async def find_batch_event(
        self, batch_id: int, from_block: int = 0
    ) -> BatchEventLike | None: ...


@dataclass(frozen=True, slots=True)
class DeploymentRef:
    """The AuditLedger deployment the anchorer writes to."""

    epoch: int
    address: str
    code_hash: bytes
    block_number: int


@dataclass
class AnchorerStats:
    """What `/readyz` reports about anchoring."""

    last_batch_id: int | None = None
    last_anchored_at: datetime | None = None
    rollbacks_detected: int = 0


@dataclass
class Anchorer:
    """Cuts pending records into batches and anchors them; see the module docstring."""

    name: ClassVar[str] = ANCHORER

    session_factory: sessionmaker[Session]
    chain: AnchorChain
    deployment: DeploymentRef
    settings: Settings
    #: Called with a step name at each durable boundary; tests raise there to simulate a crash.
    checkpoint: Callable[[str], None] = lambda _step: None
    receipt_timeout_seconds: float = 30.0
    stats: AnchorerStats = field(default_factory=AnchorerStats)
    _last_batch_looked_up: bool = field(default=False, init=False, repr=False)

    async def step(self) -> int:
        """One round: check the chain, finish unfinished batches, cut one if due; returns how
        many batches it anchored.

        Raises `ChainUnavailable` (retry later) and `ChainReset` (stop: an operator must act).
        """
        try:
            await self.reconcile()
            anchored = 0
            for plan in await asyncio.to_thread(batches.unfinished_batches, self.session_factory):
                await self._complete(plan)
                anchored += 1
            if await asyncio.to_thread(self._batch_due):
                cut = await asyncio.to_thread(self._cut)
                if cut is not None:
                    self.checkpoint("cut")
                    await self._complete(cut)
                    anchored += 1
        except AnchorRejected as exc:
            # Our view of the chain was stale (e.g. a rollback landed mid-send); the next
            # step reconciles with nextSeq() before sending anything.
            log.warning("anchor rejected, reconciling: %s", exc)
            anchored = 0
        await asyncio.to_thread(self._update_lag)
        return anchored

    async def reconcile(self) -> None:
        """Stop on a reset chain; re-queue batches a rollback or reorg took off the chain."""
        code_hash = await self.chain.code_hash(self.deployment.address)
        if code_hash != self.deployment.code_hash:
            raise ChainReset(
                f"the AuditLedger contract of epoch {self.deployment.epoch} at "
                f"{self.deployment.address} is gone from the chain: the chain was reset or "
                "replaced. Anchoring is stopped; nothing is lost, the journal holds every "
                "record. Run `crm-ledger chain recover` to open a new ledger epoch and "
                "re-anchor the journal.",
                expected="0x" + self.deployment.code_hash.hex(),
                found="0x" + code_hash.hex(),
            )
        chain_next = await self.chain.next_seq()
        journal_end = await asyncio.to_thread(batches.anchored_end, self.session_factory)
        if chain_next < journal_end:
            reset = await asyncio.to_thread(
                batches.reset_batches_from, self.session_factory, first_seq=chain_next
            )
            self.stats.rollbacks_detected += 1
            log.warning(
                "chain rolled back to seq %d (journal had anchored up to %d): "
                "re-anchoring batches %s",
                chain_next,
                journal_end,
                reset,
            )
        await self._follow_reorgs()

    async def _follow_reorgs(self) -> None:
        """Batches still on chain but in a different block after a reorg get their new place."""
        recent = await asyncio.to_thread(
            batches.recent_anchored_batches, self.session_factory, limit=16
        )
        for batch_id, block_number, block_hash in recent:
            if await self.chain.block_hash(block_number) == block_hash:
                break
            event = await self.chain.find_batch_event(batch_id, self.deployment.block_number)
            if event is None:
                # Off chain entirely; nextSeq() will say so on the next round.
                continue
            await asyncio.to_thread(self._record_location, batch_id, event)

    async def _complete(self, plan: BatchPlan) -> None:
        """Bring one cut or sent batch to anchored, sending it only if the chain lacks it."""
        chain_next = await self.chain.next_seq()
        if chain_next > plan.first_seq:
            await self._adopt_from_chain(plan)
            return
        if chain_next < plan.first_seq:
            raise AnchorRejected(
                f"batch {plan.id} starts at seq {plan.first_seq} but the chain expects "
                f"{chain_next}: an earlier batch is missing on chain",
                first_seq=plan.first_seq,
                chain_next_seq=chain_next,
            )
        if plan.status == BatchStatus.SENT.value and plan.tx_hash is not None:
            receipt = await self._await_receipt(plan.tx_hash, timeout=1.0)
            if receipt is not None and await self.chain.next_seq() > plan.first_seq:
                await asyncio.to_thread(self._record_location, plan.id, receipt)
                return
        tx_hash = await self.chain.send_anchor(plan.first_seq, plan.count, plan.root)
        self.checkpoint("sent")
        await asyncio.to_thread(
            batches.mark_sent, self.session_factory, batch_id=plan.id, tx_hash=tx_hash
        )
        self.checkpoint("marked_sent")
        receipt = await self._await_receipt(tx_hash, timeout=self.receipt_timeout_seconds)
        if receipt is None:
            raise ChainUnavailable(
                f"anchor transaction 0x{tx_hash.hex()} for batch {plan.id} was not mined within "
                f"{self.receipt_timeout_seconds:.0f} s"
            )
        self.checkpoint("mined")
        await asyncio.to_thread(self._record_location, plan.id, receipt)
        self.checkpoint("anchored")

    async def _adopt_from_chain(self, plan: BatchPlan) -> None:
        """The batch reached the chain before a crash: take its location from the event."""
        event = await self.chain.find_batch_event(plan.id, self.deployment.block_number)
        if event is None or (event.first_seq, event.count, event.root) != (
            plan.first_seq,
            plan.count,
            plan.root,
        ):
            found = (
                "no such batch"
                if event is None
                else f"first seq {event.first_seq}, count {event.count}, root 0x{event.root.hex()}"
            )
            raise ChainReset(
                f"the chain holds a different batch {plan.id} than the journal "
                f"(journal: first seq {plan.first_seq}, count {plan.count}, root "
                f"0x{plan.root.hex()}; chain: {found}). Anchoring is stopped: run "
                "`crm-ledger audit` to see what differs.",
                expected="0x" + plan.root.hex(),
                found=found,
            )
        await asyncio.to_thread(self._record_location, plan.id, event)

    async def _await_receipt(self, tx_hash: bytes, *, timeout: float) -> AnchorReceiptLike | None:
        deadline = time.monotonic() + timeout
        pause = 0.005
        while True:
            receipt = await self.chain.receipt(tx_hash)
            if receipt is not None or time.monotonic() >= deadline:
                return receipt
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.25)

    def _record_location(self, batch_id: int, where: AnchorReceiptLike) -> None:
        batches.mark_anchored(
            self.session_factory,
            batch_id=batch_id,
            epoch=self.deployment.epoch,
            tx_hash=where.tx_hash,
            block_number=where.block_number,
            block_hash=where.block_hash,
            gas_used=where.gas_used,
        )
        metrics.batches_anchored_total.inc()
        metrics.anchor_gas_used_total.inc(where.gas_used)
        self.stats.last_batch_id = batch_id
        self.stats.last_anchored_at = utcnow()

    def _cut(self) -> BatchPlan | None:
        return batches.cut_batch(self.session_factory, max_records=self.settings.batch_max_records)

    def _batch_due(self) -> bool:
        summary = batches.pending_summary(
            self.session_factory, limit=self.settings.batch_max_records
        )
        if summary.count == 0 or summary.oldest_created_at is None:
            return False
        if summary.count >= self.settings.batch_max_records:
            return True
        age = (utcnow() - summary.oldest_created_at).total_seconds()
        return age >= self.settings.batch_max_age_seconds

    def _update_lag(self) -> None:
        if not self._last_batch_looked_up:
            # After a restart /readyz shows the journal's last anchored batch at once, not null
            # until the next batch is anchored.
            self.stats.last_batch_id = batches.last_anchored_batch_id(self.session_factory)
            self._last_batch_looked_up = True
        summary = batches.pending_summary(self.session_factory, limit=None)
        metrics.records_pending.set(summary.count)
        lag = (
            0.0
            if summary.oldest_created_at is None
            else (utcnow() - summary.oldest_created_at).total_seconds()
        )
        metrics.anchoring_lag_seconds.set(lag)
