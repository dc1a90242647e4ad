"""The issuance worker: moves planned lots, redemptions and expirations onto LoyaltyToken.

Exports: `IssuanceWorker`, `TokenChain`, `TokenDeploymentRef`, `IssuanceStats`.

Like the anchorer, it treats the journal as the outbox. Each round:

1. reconcile: stop if the token's code is gone (`ChainReset`); walk confirmed ops from the
   newest block down until one's block is still on chain; each op whose block changed is either
   moved (its transaction was mined again elsewhere) or put back to planned (rolled back), and
   will be sent again;
2. set campaign budgets on chain where they differ from the journal's target;
3. plan earnings for newly anchored records (cursor in the database);
4. every `loyalty_expiry_interval_seconds`, plan expirations of lots past their expiry;
5. cut planned lots into issue ops, and pending redemptions into redeem ops;
6. finish every unfinished op, issues first: an op already sent is looked up by its
   transaction; otherwise it is sent (after checking `campaignRemaining`, because a batch over
   budget reverts whole), its hash recorded, its receipt awaited, and each entry recorded at the
   transaction that minted or burnt it. Entries the transaction skipped because their id was
   used (sent before a crash, or before a rollback) are found through their events.

The contract's used-id bitmaps are the last guard: however a crash or a rollback interleaves
with this, an issuance or burn id takes effect at most once. A chain that cannot be reached
leaves everything queued; the worker backs off and retries.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.config import Settings
from crm_ledger.db.models import utcnow
from crm_ledger.errors import ChainReset, ChainUnavailable
from crm_ledger.loyalty import ops
from crm_ledger.loyalty.chain import TokenEvent, TokenReceipt, TokenRejected
from crm_ledger.loyalty.earning import plan_earnings
from crm_ledger.loyalty.expiry import plan_expirations
from crm_ledger.loyalty.ops import Located, OpKind, OpPlan
from crm_ledger.loyalty.wallets import WalletKeyring

log = logging.getLogger(__name__)

_EVENT_OF = {OpKind.ISSUE.value: "Issued", OpKind.REDEEM.value: "Redeemed", "expire": "Expired"}


class TokenChain(Protocol):
    """What the worker needs from the chain; `loyalty.chain.LoyaltyToken` is the real one."""

    async def code_hash(self, address: str) -> bytes: ...
    async def block_hash(self, number: int) -> bytes | None: ...
    async def campaign_budget(self, campaign: bytes) -> int: ...
    async def campaign_remaining(self, campaign: bytes) -> int: ...
    async def issued(self, issuance_id: bytes) -> bool: ...
    async def send_set_budget(self, campaign: bytes, budget: int) -> bytes: ...
    async def send_issue_batch(
        self,
        campaign: bytes,
        ids: Sequence[bytes],
        holders: Sequence[str],
        amounts: Sequence[int],
    ) -> bytes: ...
    async def send_redeem(self, burn_id: bytes, holder: str, amount: int, ref: bytes) -> bytes: ...
    async def send_expire_batch(
        self,
        ids: Sequence[bytes],
        holders: Sequence[str],
        amounts: Sequence[int],
        reason: bytes,
    ) -> bytes: ...
    async def receipt(self, tx_hash: bytes) -> TokenReceipt | None: ...
    async def find_events(
        self, kind: str, ids: Sequence[bytes], *, from_block: int
    ) -> list[TokenEvent]: ...


@dataclass(frozen=True, slots=True)
class TokenDeploymentRef:
    """The LoyaltyToken deployment the worker writes to."""

    address: str
    code_hash: bytes
    block_number: int


@dataclass
class IssuanceStats:
    """What `/readyz` reports about loyalty."""

    #: What the last round had to leave waiting, and why (None when nothing waits).
    waiting_for: str | None = None
    ops_confirmed: int = 0
    rollbacks_detected: int = 0


@dataclass
class IssuanceWorker:
    """Sends what the journal planned to LoyaltyToken; see the module docstring."""

    session_factory: sessionmaker[Session]
    token: TokenChain
    deployment: TokenDeploymentRef
    keyring: WalletKeyring
    settings: Settings
    #: Called with a step name at each durable boundary; tests raise there to simulate a crash.
    checkpoint: Callable[[str], None] = lambda _step: None
    receipt_timeout_seconds: float = 30.0
    stats: IssuanceStats = field(default_factory=IssuanceStats)
    _next_expiry_at: float = 0.0
    #: When the chain must next be checked even if the worker has nothing to send (`step`).
    _next_chain_check: float = 0.0
    #: Whether this step has checked the chain yet.
    _checked: bool = False

    async def step(self) -> bool:
        """One round (see the module docstring); True when it did something.

        The chain is checked (`reconcile`: reset, rollback) before anything is sent, and at
        least every `anchor_idle_check_seconds` when nothing is: the supervisor steps an idle
        worker every `loyalty_poll_seconds`, and checking the chain each time was most of an
        idle service's CPU.
        """
        self.stats.waiting_for = None
        self._checked = False
        if time.monotonic() >= self._next_chain_check:
            await self._check_chain()
        await self.sync_budgets()
        worked = False
        while await asyncio.to_thread(plan_earnings, self.session_factory):
            worked = True
        if time.monotonic() >= self._next_expiry_at:
            self._next_expiry_at = time.monotonic() + self.settings.loyalty_expiry_interval_seconds
            if await asyncio.to_thread(
                plan_expirations,
                self.session_factory,
                now=utcnow(),
                max_entries=self.settings.loyalty_expire_batch_max_entries,
            ):
                worked = True
        await asyncio.to_thread(
            ops.cut_issue_ops,
            self.session_factory,
            self.keyring,
            max_entries=self.settings.loyalty_batch_max_entries,
        )
        await asyncio.to_thread(ops.cut_redeem_ops, self.session_factory)
        plans = await asyncio.to_thread(ops.unfinished_ops, self.session_factory)
        if plans and not self._checked:
            # A rollback found now sends some ops again: read them after the check.
            await self._check_chain()
            plans = await asyncio.to_thread(ops.unfinished_ops, self.session_factory)
        for plan in plans:
            if await self._complete(plan):
                worked = True
        return worked

    async def _check_chain(self) -> None:
        await self.reconcile()
        self._checked = True
        self._next_chain_check = time.monotonic() + self.settings.anchor_idle_check_seconds

    def expire_now(self) -> None:
        """Plan expirations in the next round instead of at the next interval."""
        self._next_expiry_at = 0.0

    # Reconciliation ----------------------------------------------------------------------

    async def reconcile(self) -> None:
        """Halt on a reset chain; re-plan ops a rollback took off the chain (see docstring)."""
        code_hash = await self.token.code_hash(self.deployment.address)
        if code_hash != self.deployment.code_hash:
            raise ChainReset(
                f"the LoyaltyToken at {self.deployment.address} is gone from the chain: the "
                "chain was reset or replaced. Issuance, redemption and expiry are stopped; the "
                "journal keeps every lot, redemption and expiration, but the points on chain "
                "are gone with the token, and re-issuing them is not automated.",
                expected="0x" + self.deployment.code_hash.hex(),
                found="0x" + code_hash.hex(),
            )
        rolled_back = 0
        before: tuple[int, int] | None = None
        while True:
            rows = await asyncio.to_thread(
                ops.confirmed_ops_newest_first, self.session_factory, limit=32, before=before
            )
            if not rows:
                break
            for pk, number, block_hash, tx_hash in rows:
                if await self.token.block_hash(number) == block_hash:
                    rows = []
                    break
                receipt = await self.token.receipt(tx_hash)
                if receipt is not None and receipt.status == 1:
                    await asyncio.to_thread(
                        ops.relocate,
                        self.session_factory,
                        op_pk=pk,
                        tx_hash=tx_hash,
                        block_number=receipt.block_number,
                        block_hash=receipt.block_hash,
                    )
                else:
                    await asyncio.to_thread(ops.reset_op, self.session_factory, op_pk=pk)
                    rolled_back += 1
                before = (number, pk)
            if not rows:
                break
        if rolled_back:
            self.stats.rollbacks_detected += 1
            await asyncio.to_thread(ops.forget_chain_budgets, self.session_factory)
            log.warning(
                "loyalty: chain rolled back; %d transactions will be sent again", rolled_back
            )

    async def sync_budgets(self) -> None:
        """Make the chain hold each campaign's target budget (the chain checked first)."""
        budgets = await asyncio.to_thread(ops.budgets_to_sync, self.session_factory)
        if budgets and not self._checked:
            await self._check_chain()
            budgets = await asyncio.to_thread(ops.budgets_to_sync, self.session_factory)
        for pk, campaign, target in budgets:
            if await self.token.campaign_budget(campaign) != target:
                try:
                    tx_hash = await self.token.send_set_budget(campaign, target)
                except TokenRejected as exc:
                    log.error("loyalty: cannot set the budget of campaign %d: %s", pk, exc)
                    self.stats.waiting_for = f"the budget of campaign {pk}: {exc}"
                    continue
                receipt = await self._await_receipt(tx_hash, timeout=self.receipt_timeout_seconds)
                if receipt is None or receipt.status != 1:
                    raise ChainUnavailable(
                        f"the budget transaction 0x{tx_hash.hex()} was not mined in time"
                    )
            await asyncio.to_thread(
                ops.record_chain_budget, self.session_factory, pk=pk, budget=target
            )

    # Ops ---------------------------------------------------------------------------------

    async def _complete(self, plan: OpPlan) -> bool:
        """Bring one op to confirmed or failed; False when it must wait for something."""
        if not plan.entries:
            await asyncio.to_thread(
                ops.mark_failed, self.session_factory, plan=plan, error="nothing left to send"
            )
            return True
        if plan.status == ops.OpStatus.SENT.value and plan.tx_hash is not None:
            receipt = await self._await_receipt(plan.tx_hash, timeout=1.0)
            if receipt is not None:
                await self._record(plan, receipt)
                return True
        if plan.kind == OpKind.ISSUE.value and not await self._fits_budget(plan):
            return True
        try:
            tx_hash = await self._send(plan)
        except TokenRejected as exc:
            return await self._rejected(plan, exc)
        self.checkpoint("sent")
        await asyncio.to_thread(ops.mark_sent, self.session_factory, op_pk=plan.pk, tx_hash=tx_hash)
        self.checkpoint("marked_sent")
        receipt = await self._await_receipt(tx_hash, timeout=self.receipt_timeout_seconds)
        if receipt is None:
            raise ChainUnavailable(
                f"loyalty transaction 0x{tx_hash.hex()} ({plan.kind}, op {plan.pk}) was not "
                f"mined within {self.receipt_timeout_seconds:.0f} s"
            )
        self.checkpoint("mined")
        await self._record(plan, receipt)
        self.checkpoint("confirmed")
        return True

    async def _fits_budget(self, plan: OpPlan) -> bool:
        """Whether the campaign can pay for the op's new ids; fails the op when it cannot."""
        assert plan.campaign is not None
        remaining = await self.token.campaign_remaining(plan.campaign)
        if plan.total <= remaining:
            return True
        await self.sync_budgets()
        remaining = await self.token.campaign_remaining(plan.campaign)
        if plan.total <= remaining:
            return True
        # Some ids may be used already (sent before a crash); only new ones count.
        new = 0
        for entry in plan.entries:
            if not await self.token.issued(entry.id):
                new += entry.amount
        if new <= remaining:
            return True
        await asyncio.to_thread(
            ops.mark_failed,
            self.session_factory,
            plan=plan,
            error=f"the campaign has {remaining} points left on chain and the batch needs {new}",
        )
        return False

    async def _send(self, plan: OpPlan) -> bytes:
        entries = plan.entries
        ids = [e.id for e in entries]
        holders = [e.holder for e in entries]
        amounts = [e.amount for e in entries]
        if plan.kind == OpKind.ISSUE.value:
            assert plan.campaign is not None
            return await self.token.send_issue_batch(plan.campaign, ids, holders, amounts)
        if plan.kind == OpKind.REDEEM.value:
            (entry,) = entries
            assert entry.ref is not None
            return await self.token.send_redeem(entry.id, entry.holder, entry.amount, entry.ref)
        reason = entries[0].ref
        assert reason is not None
        return await self.token.send_expire_batch(ids, holders, amounts, reason)

    async def _rejected(self, plan: OpPlan, exc: TokenRejected) -> bool:
        """The contract would revert: adopt, wait, or fail, depending on why."""
        if plan.kind == OpKind.REDEEM.value and exc.error == "LoyaltyTokenIdUsed":
            # Burnt before a crash, or before a rollback that kept the burn: adopt the event.
            events = await self.token.find_events(
                "Redeemed", [e.id for e in plan.entries], from_block=self.deployment.block_number
            )
            if events:
                await self._confirm(
                    plan, events[0].tx_hash, events[0].block_number, events[0].block_hash, 0, events
                )
                return True
        if exc.error == "ERC20InsufficientBalance" and plan.kind != OpKind.ISSUE.value:
            waiting = await asyncio.to_thread(
                ops.customers_with_unissued_lots,
                self.session_factory,
                [e.customer_pk for e in plan.entries],
            )
            if waiting:
                # The points are planned but not back on chain yet (e.g. after a rollback).
                self.stats.waiting_for = f"issuances before op {plan.pk}: {exc}"
                return False
        log.error("loyalty: op %d (%s) refused by the contract: %s", plan.pk, plan.kind, exc)
        await asyncio.to_thread(ops.mark_failed, self.session_factory, plan=plan, error=str(exc))
        return True

    async def _record(self, plan: OpPlan, receipt: TokenReceipt) -> None:
        if receipt.status != 1:
            error = (
                f"transaction 0x{receipt.tx_hash.hex()} reverted in block {receipt.block_number} "
                f"(gas used {receipt.gas_used} of {receipt.gas_limit})"
            )
            log.error("loyalty: op %d (%s): %s", plan.pk, plan.kind, error)
            await asyncio.to_thread(ops.mark_failed, self.session_factory, plan=plan, error=error)
            return
        await self._confirm(
            plan,
            receipt.tx_hash,
            receipt.block_number,
            receipt.block_hash,
            receipt.gas_used,
            list(receipt.events),
        )

    async def _confirm(
        self,
        plan: OpPlan,
        tx_hash: bytes,
        block_number: int,
        block_hash: bytes,
        gas_used: int,
        events: list[TokenEvent],
    ) -> None:
        kind = _EVENT_OF[plan.kind]
        located = {e.id: Located(e.tx_hash, e.block_number) for e in events if e.kind == kind}
        missing = [e.id for e in plan.entries if e.id not in located]
        if missing:
            for event in await self.token.find_events(
                kind, missing, from_block=self.deployment.block_number
            ):
                located.setdefault(event.id, Located(event.tx_hash, event.block_number))
        await asyncio.to_thread(
            ops.mark_confirmed,
            self.session_factory,
            plan=plan,
            tx_hash=tx_hash,
            block_number=block_number,
            block_hash=block_hash,
            gas_used=gas_used,
            located=located,
        )
        self.stats.ops_confirmed += 1

    async def _await_receipt(self, tx_hash: bytes, *, timeout: float) -> TokenReceipt | None:
        deadline = time.monotonic() + timeout
        pause = 0.005
        while True:
            receipt = await self.token.receipt(tx_hash)
            if receipt is not None or time.monotonic() >= deadline:
                return receipt
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.25)
