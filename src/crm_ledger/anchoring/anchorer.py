"""The anchorer: moves the journal onto the chain, one Merkle batch per transaction.

Exports: `Anchorer`, `AnchorChain`, `DeploymentRef`, `AnchorerStats`.

The journal is the outbox. A batch goes through three durable states, and a restart at any
instruction resumes from whichever one the database holds:

    cut       seqs assigned, root and head computed, nothing sent yet
    sent      a transaction hash is recorded; it may or may not be mined
    anchored  the chain holds the batch at a known transaction and block

A sent transaction that is not mined within `anchor_replace_after_seconds` is replaced under the
same nonce with both EIP-1559 fee caps raised (`anchoring.fees`), up to a cap; whichever of the
transactions sent for the batch is mined is the one recorded. The batch row holds the latest
hash; after a restart the node tells its nonce and fees, so replacing goes on where it stopped.

Batches form a pipeline: while batch n is mined, batch n + 1 is cut (seqs, leaves, root and
head written to the journal), so under load the journal work never waits on the chain; one
step anchors every due batch, in order, up to `MAX_BATCHES_PER_STEP`. One anchor transaction is
in flight at a time: batch n + 1 goes out once batch n is mined (its gas is estimated on a chain
that already holds batch n). Once batch n is sent, one write transaction records its hash,
where the chain holds batch n - 1, and cuts batch n + 1 (`batches.record_progress`): under load
each write transaction waits its turn for SQLite's write lock behind the API's commits, and one
wait per batch instead of three (cut, sent, anchored) anchored more records per second
(docs/benchmarks.md). A crash between batch n - 1 mined and that write loses nothing: the next
step finds batch n - 1 on chain (`nextSeq()` is past it) and adopts it.

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
import contextlib
import enum
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar, Protocol

from sqlalchemy.orm import Session, sessionmaker

from crm_ledger import metrics
from crm_ledger.anchoring import batches
from crm_ledger.anchoring.batches import BatchPlan
from crm_ledger.anchoring.fees import first_fees, gwei_to_wei, replacement_fees
from crm_ledger.chain.contract import Fees, SentTransaction
from crm_ledger.config import Settings
from crm_ledger.db.models import BatchStatus, utcnow
from crm_ledger.errors import AnchorRejected, ChainReset
from crm_ledger.verifier.chain import BatchAnchoredEvent
from crm_ledger.workers.lock import ANCHORER

log = logging.getLogger(__name__)

#: How often a wait for an anchor transaction asks the node whether it still knows it.
FORGOTTEN_CHECK_SECONDS = 1.0
#: Batches one step anchors at most before it reconciles with the chain again.
MAX_BATCHES_PER_STEP = 16


class _Wait(enum.Enum):
    """What a wait for an anchor transaction ends with when it is not a receipt."""

    FORGOTTEN = "the node no longer knows the transaction"


class AnchorChain(Protocol):
    """What the anchorer needs from the chain; `chain.client.LedgerChain` is the real one."""

    async def code_hash(self, address: str) -> bytes: ...
    async def next_seq(self) -> int: ...
    async def block_hash(self, number: int) -> bytes | None: ...
    async def fee_quote(self) -> Fees: ...
    async def account_nonce(self) -> int: ...
    async def sent_transaction(self, tx_hash: bytes) -> SentTransaction | None: ...
    async def send_anchor_transaction(
        self,
        first_seq: int,
        count: int,
        root: bytes,
        *,
        nonce: int | None = None,
        fees: Fees | None = None,
    ) -> SentTransaction: ...
    async def receipt(self, tx_hash: bytes) -> BatchAnchoredEvent | None: ...
    async def find_batch_event(
        self, batch_id: int, from_block: int = 0
    ) -> BatchAnchoredEvent | None: ...


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
    #: Until when an idle step may leave the chain unchecked (`step`).
    _next_idle_check: float = field(default=0.0, init=False, repr=False)
    #: Batches seen mined and not yet recorded as anchored: written with the next batch's sent
    #: mark, or when the round ends (`_anchor_in_order`).
    _mined: list[batches.Location] = field(default_factory=list, init=False, repr=False)
    #: While the batch in flight is the last one cut (`_anchor_in_order`): the write that records
    #: it as sent also cuts the next batch, if one is due, into `_cut_next` (`_record`).
    _cut_ahead: bool = field(default=False, init=False, repr=False)
    _cut_next: BatchPlan | None = field(default=None, init=False, repr=False)

    async def step(self) -> int:
        """One round: check the chain, finish unfinished batches, cut and anchor while batches
        are due (up to `MAX_BATCHES_PER_STEP`); returns how many batches it anchored.

        Raises `ChainUnavailable` (retry later) and `ChainReset` (stop: an operator must act).

        A step with nothing to anchor checks the chain (reset, rollback, reorg) only once every
        `anchor_idle_check_seconds`: the supervisor steps an idle anchorer every
        `anchor_poll_seconds`, and the check is two calls to the node and four reads, most of
        an idle service's CPU. A step with work checks the chain before anything else.
        """
        if time.monotonic() < self._next_idle_check and await asyncio.to_thread(self._idle):
            return 0
        try:
            await self.reconcile()
            self._next_idle_check = time.monotonic() + self.settings.anchor_idle_check_seconds
            plans = await asyncio.to_thread(batches.unfinished_batches, self.session_factory)
            if not plans:
                cut = await asyncio.to_thread(self._cut_if_due)
                if cut is not None:
                    self.checkpoint("cut")
                    plans = [cut]
            anchored = await self._anchor_in_order(plans)
        except AnchorRejected as exc:
            # Our view of the chain was stale (e.g. a rollback landed mid-send); the next
            # step reconciles with nextSeq() before sending anything.
            log.warning("anchor rejected, reconciling: %s", exc)
            anchored = 0
        await asyncio.to_thread(self._update_lag)
        return anchored

    async def _anchor_in_order(self, plans: list[BatchPlan]) -> int:
        """Anchor `plans` one after the other, oldest first; while the last of them is mined,
        cut the next batch if one is due (in the write that records it as sent), and go on with
        it (a pipeline: the journal work of batch n + 1 overlaps the mining of batch n). Stops
        at the first batch that is not anchored (the next step picks it up) and after
        `MAX_BATCHES_PER_STEP`, so that `reconcile()` runs between rounds.

        Only one anchor transaction is in flight at a time: batch n + 1 is sent once batch n is
        mined, so the contract's next-seq check never sees them out of order.
        """
        queue = deque(plans)
        anchored = 0
        # Left by a round that was cancelled: the chain says where those batches are.
        self._mined.clear()
        try:
            while queue and anchored < MAX_BATCHES_PER_STEP:
                plan = queue.popleft()
                # The next batch is cut in the write that records this one as sent, while it is
                # mined (`_record`); after it when no such write comes (it was sent before).
                self._cut_ahead = not queue and anchored + 1 < MAX_BATCHES_PER_STEP
                self._cut_next = None
                done = await self._complete(plan)
                following = self._cut_next
                if self._cut_ahead:
                    self._cut_ahead = False
                    following = await asyncio.to_thread(self._cut_if_due)
                if following is not None:
                    self.checkpoint("cut")
                    queue.append(following)
                if not done:
                    break
                anchored += 1
        except (AnchorRejected, ChainReset):
            # The chain no longer holds what the round saw mined (a rollback, a reset): nothing
            # of it is written; the next step's `reconcile` finds what is on chain.
            self._mined.clear()
            raise
        except Exception:
            # A batch seen mined is recorded before the error goes up (a chain gone down must
            # not hold back its receipts); if that fails too, the next step finds it on chain.
            with contextlib.suppress(Exception):
                await self._record()
            raise
        finally:
            self._cut_ahead = False
        await self._record()
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
            await self._record(self._location(batch_id, event))

    async def _complete(self, plan: BatchPlan) -> bool:
        """Bring one cut or sent batch to anchored, sending it only if the chain lacks it;
        False when it is not anchored yet (the next step goes on with it)."""
        chain_next = await self.chain.next_seq()
        if chain_next > plan.first_seq:
            await self._adopt_from_chain(plan)
            return True
        if chain_next < plan.first_seq:
            raise AnchorRejected(
                f"batch {plan.id} starts at seq {plan.first_seq} but the chain expects "
                f"{chain_next}: an earlier batch is missing on chain",
                first_seq=plan.first_seq,
                chain_next_seq=chain_next,
            )
        if plan.status == BatchStatus.SENT.value and plan.tx_hash is not None:
            receipt = await self.chain.receipt(plan.tx_hash)
            if receipt is not None:
                await self._record(self._location(plan.id, receipt))
                return True
            # Still pending: go on replacing it under its nonce. Forgotten by the node (or its
            # nonce went to another transaction): send it again under the account's next nonce
            # to be mined, never a later one, so that a replacement sent just before a crash and
            # not yet recorded is replaced, or (offering more: "underpriced") waited for until
            # it is mined and adopted; never followed by a second nonce.
            sent = await self.chain.sent_transaction(plan.tx_hash)
            next_nonce = await self.chain.account_nonce()
            if sent is None or sent.nonce < next_nonce:
                sent = await self._send(plan, nonce=next_nonce, fees=None)
        else:
            sent = await self._send(plan, nonce=None, fees=None)
        receipt = await self._until_mined(plan, sent)
        if receipt is None:
            # Stopping; or none of its transactions was mined but the chain moved past it (or
            # its nonce went to another transaction): the next step adopts it or sends it anew.
            return False
        self.checkpoint("mined")
        # Recorded with the next batch's sent mark, or when this round ends (`_record`).
        self._mined.append(self._location(plan.id, receipt))
        return True

    async def _send(
        self, plan: BatchPlan, *, nonce: int | None, fees: Fees | None
    ) -> SentTransaction:
        """Send (or, with `nonce` and `fees`, replace) the batch's anchor; record its hash."""
        if fees is None:
            cap = gwei_to_wei(self.settings.anchor_max_fee_per_gas_gwei)
            fees = first_fees(await self.chain.fee_quote(), cap_wei=cap)
        sent = await self.chain.send_anchor_transaction(
            plan.first_seq, plan.count, plan.root, nonce=nonce, fees=fees
        )
        self.checkpoint("sent")
        await self._record(sent=(plan.id, sent.tx_hash))
        self.checkpoint("marked_sent")
        return sent

    async def _until_mined(
        self, plan: BatchPlan, sent: SentTransaction
    ) -> BatchAnchoredEvent | None:
        """Wait for any of the batch's transactions; replace the latest each time one is not
        mined within `anchor_replace_after_seconds`, until one is (its receipt), or the chain
        holds the batch some other way or the nonce went elsewhere (None). The supervisor
        cancels a wait that outlasts its stop grace: a crash here is one the anchorer survives.

        Raises `AnchorFeeCapReached` when the next replacement would exceed the fee cap.
        """
        hashes = [sent.tx_hash]
        cap = gwei_to_wei(self.settings.anchor_max_fee_per_gas_gwei)
        while True:
            receipt = await self._await_any_receipt(
                hashes, timeout=self.settings.anchor_replace_after_seconds
            )
            if receipt is _Wait.FORGOTTEN:
                return None
            if receipt is not None:
                return receipt
            if (
                await self.chain.next_seq() > plan.first_seq
                or await self.chain.account_nonce() > sent.nonce
            ):
                # A receipt may have landed since the last poll: one more look before giving up.
                last_look = await self._await_any_receipt(hashes, timeout=0)
                return None if last_look is _Wait.FORGOTTEN else last_look
            fees = replacement_fees(
                sent.fees,
                await self.chain.fee_quote(),
                bump_percent=self.settings.anchor_fee_bump_percent,
                cap_wei=cap,
                tx_label=(
                    f"anchor transaction 0x{sent.tx_hash.hex()} (nonce {sent.nonce}) for "
                    f"batch {plan.id}"
                ),
            )
            log.warning(
                "anchor transaction 0x%s for batch %d not mined after %.0f s: replacing it "
                "(nonce %d, max fee %d -> %d wei)",
                sent.tx_hash.hex(),
                plan.id,
                self.settings.anchor_replace_after_seconds,
                sent.nonce,
                sent.fees.max_fee_per_gas,
                fees.max_fee_per_gas,
            )
            sent = await self._send(plan, nonce=sent.nonce, fees=fees)
            metrics.anchor_replacements_total.inc()
            hashes.append(sent.tx_hash)

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
        await self._record(self._location(plan.id, event))

    async def _await_any_receipt(
        self, tx_hashes: list[bytes], *, timeout: float
    ) -> BatchAnchoredEvent | _Wait | None:
        """The receipt of whichever of `tx_hashes` is mined, polling for up to `timeout` s.

        Every `FORGOTTEN_CHECK_SECONDS` it also asks the node whether it still knows the latest
        transaction: one dropped by a rollback or a reorg (Anvil's `evm_revert`, a real reorg
        whose new branch lacks it) would otherwise be waited on for the whole `timeout`. Then
        it answers `_Wait.FORGOTTEN`, and the next step sends the batch again under the account's
        next nonce (`_complete`).
        """
        deadline = time.monotonic() + timeout
        check_known_at = time.monotonic() + FORGOTTEN_CHECK_SECONDS
        pause = 0.005
        while True:
            for tx_hash in reversed(tx_hashes):
                receipt = await self.chain.receipt(tx_hash)
                if receipt is not None:
                    return receipt
            now = time.monotonic()
            if now >= deadline:
                return None
            if now >= check_known_at:
                check_known_at = now + FORGOTTEN_CHECK_SECONDS
                if await self._forgotten(tx_hashes[-1]):
                    return _Wait.FORGOTTEN
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.25)

    async def _forgotten(self, tx_hash: bytes) -> bool:
        """The node knows neither the transaction nor its receipt (asked in that order, so a
        transaction mined between the two questions is not taken for a dropped one)."""
        if await self.chain.sent_transaction(tx_hash) is not None:
            return False
        if await self.chain.receipt(tx_hash) is not None:
            return False
        log.warning(
            "anchor transaction 0x%s is no longer known to the node (rolled back or dropped): "
            "sending the batch again",
            tx_hash.hex(),
        )
        return True

    def _location(self, batch_id: int, where: BatchAnchoredEvent) -> batches.Location:
        return batches.Location(
            batch_id=batch_id,
            epoch=self.deployment.epoch,
            tx_hash=where.tx_hash,
            block_number=where.block_number,
            block_hash=where.block_hash,
            gas_used=where.gas_used,
        )

    async def _record(
        self, located: batches.Location | None = None, *, sent: tuple[int, bytes] | None = None
    ) -> None:
        """Write in one transaction what the chain did: the batches seen mined since the last
        write (`_mined`) and `located` as anchored, `sent` (batch id, transaction hash) as sent,
        and, when `_cut_ahead` asks for it, the next batch cut (into `_cut_next`). Under load
        SQLite's write lock is a queue behind the API's commits: one write per batch waits in
        it once instead of three times (cut, sent, anchored)."""
        mined = [*self._mined, *([located] if located is not None else [])]
        # Not written (an error): the next step finds them on chain (`_adopt_from_chain`).
        self._mined.clear()
        if not mined and sent is None:
            return
        cut = self._cut_ahead and sent is not None
        if cut:
            self._cut_ahead = False
        following = await asyncio.to_thread(self._write_progress, mined, sent, cut)
        if cut:
            self._cut_next = following
        for where in mined:
            metrics.batches_anchored_total.inc()
            if where.gas_used is not None:  # the service's chain client always reads it
                metrics.anchor_gas_used_total.inc(where.gas_used)
            self.stats.last_batch_id = where.batch_id
            self.stats.last_anchored_at = utcnow()
            self.checkpoint("anchored")

    def _idle(self) -> bool:
        """Nothing to anchor: no batch cut or sent and none due (read without the write lock).
        Updates the lag figures, as a step does."""
        pending = self._update_lag()
        if self._due(pending):
            return False
        return not batches.unfinished_batches(self.session_factory)

    def _write_progress(
        self, mined: list[batches.Location], sent: tuple[int, bytes] | None, cut: bool
    ) -> BatchPlan | None:
        """`batches.record_progress`, cutting the next batch too when `cut` and one is due."""
        plan = self._plan_cut() if cut else None
        return batches.record_progress(self.session_factory, anchored=mined, sent=sent, cut=plan)

    def _cut_if_due(self) -> BatchPlan | None:
        plan = self._plan_cut()
        return None if plan is None else batches.record_progress(self.session_factory, cut=plan)

    def _plan_cut(self) -> batches.CutPlan | None:
        """The next batch worked out before the write that cuts it (`batches.plan_cut`), if
        one is due."""
        if not self._batch_due():
            return None
        return batches.plan_cut(self.session_factory, max_records=self.settings.batch_max_records)

    def _batch_due(self) -> bool:
        return self._due(
            batches.pending_summary(self.session_factory, limit=self.settings.batch_max_records)
        )

    def _due(self, summary: batches.PendingSummary) -> bool:
        if summary.count == 0 or summary.oldest_created_at is None:
            return False
        if summary.count >= self.settings.batch_max_records:
            return True
        age = (utcnow() - summary.oldest_created_at).total_seconds()
        return age >= self.settings.batch_max_age_seconds

    def _update_lag(self) -> batches.PendingSummary:
        """Set the pending and lag metrics; returns the pending records' summary."""
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
        return summary
