"""A fake LoyaltyToken with the contract's rules, and journal factories for loyalty tests.

`FakeToken` keeps every transaction it mined, in blocks, and rebuilds its state by replaying
them, so a test can roll the chain back to any block, take it down, or reset it.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.db.models import Customer, LoyaltyCampaign, LoyaltyIssuance, utcnow
from crm_ledger.errors import ChainUnavailable
from crm_ledger.loyalty.campaigns import create_campaign
from crm_ledger.loyalty.chain import TokenEvent, TokenReceipt, TokenRejected
from crm_ledger.loyalty.schemas import CampaignCreate
from tests.anchoring.fakes import make_customer

CODE_HASH = hashlib.sha256(b"LoyaltyToken").digest()
ADDRESS = "0x" + "22" * 20


@dataclass
class _Tx:
    tx_hash: bytes
    function: str
    args: tuple[Any, ...]


@dataclass
class FakeToken:
    """LoyaltyToken's rules: budgets, used-id bitmaps, balances, events; no gas."""

    address: str = ADDRESS
    down: bool = False
    code_hash_value: bytes = CODE_HASH
    blocks: list[_Tx] = field(default_factory=list)
    block_salt: dict[int, bytes] = field(default_factory=dict)
    sent: Counter[str] = field(default_factory=Counter)
    _salt: itertools.count[int] = field(default_factory=itertools.count)

    # State, rebuilt from `blocks` by `_replay`.
    budgets: dict[bytes, int] = field(default_factory=dict)
    campaign_issued: dict[bytes, int] = field(default_factory=dict)
    issued_ids: set[bytes] = field(default_factory=set)
    burned_ids: set[bytes] = field(default_factory=set)
    balances: Counter[str] = field(default_factory=Counter)
    receipts: dict[bytes, TokenReceipt] = field(default_factory=dict)
    #: How often each issuance id was minted, over the whole life of the current chain.
    mints: Counter[bytes] = field(default_factory=Counter)

    def _up(self) -> None:
        if self.down:
            raise ChainUnavailable("fake chain at http://127.0.0.1:1 is down")

    # Reads ----------------------------------------------------------------------------

    async def code_hash(self, address: str) -> bytes:
        self._up()
        return self.code_hash_value

    async def block_hash(self, number: int) -> bytes | None:
        self._up()
        if number > len(self.blocks):
            return None
        return hashlib.sha256(b"block%d" % number + self.block_salt.get(number, b"")).digest()

    async def balance_of(self, holder: str) -> int:
        self._up()
        return self.balances[holder]

    async def campaign_budget(self, campaign: bytes) -> int:
        self._up()
        return self.budgets.get(campaign, 0)

    async def campaign_remaining(self, campaign: bytes) -> int:
        self._up()
        return self.budgets.get(campaign, 0) - self.campaign_issued.get(campaign, 0)

    async def issued(self, issuance_id: bytes) -> bool:
        self._up()
        return issuance_id in self.issued_ids

    async def receipt(self, tx_hash: bytes) -> TokenReceipt | None:
        self._up()
        return self.receipts.get(tx_hash)

    async def find_events(
        self, kind: str, ids: Sequence[bytes], *, from_block: int
    ) -> list[TokenEvent]:
        self._up()
        wanted = set(ids)
        return [
            event
            for receipt in self.receipts.values()
            for event in receipt.events
            if event.kind == kind and event.id in wanted and event.block_number >= from_block
        ]

    # Transactions (checked as eth_estimateGas would, then mined at once) ---------------

    async def send_set_budget(self, campaign: bytes, budget: int) -> bytes:
        self._up()
        issued = self.campaign_issued.get(campaign, 0)
        if budget < issued:
            raise TokenRejected("budget below issued", error="LoyaltyTokenBudgetBelowIssued")
        return self._mine("setCampaignBudget", (campaign, budget))

    async def send_issue_batch(
        self,
        campaign: bytes,
        ids: Sequence[bytes],
        holders: Sequence[str],
        amounts: Sequence[int],
    ) -> bytes:
        self._up()
        fresh: set[bytes] = set()
        requested = 0
        for issuance_id, amount in zip(ids, amounts, strict=True):
            if issuance_id not in self.issued_ids and issuance_id not in fresh:
                fresh.add(issuance_id)
                requested += amount
        remaining = await self.campaign_remaining(campaign)
        if requested > remaining:
            raise TokenRejected(
                f"LoyaltyTokenBudgetExceeded({remaining}, {requested})",
                error="LoyaltyTokenBudgetExceeded",
            )
        return self._mine("issueBatch", (campaign, tuple(ids), tuple(holders), tuple(amounts)))

    async def send_redeem(self, burn_id: bytes, holder: str, amount: int, ref: bytes) -> bytes:
        self._up()
        if burn_id in self.burned_ids:
            raise TokenRejected("LoyaltyTokenIdUsed", error="LoyaltyTokenIdUsed")
        if self.balances[holder] < amount:
            raise TokenRejected("ERC20InsufficientBalance", error="ERC20InsufficientBalance")
        return self._mine("redeem", (burn_id, holder, amount, ref))

    async def send_expire_batch(
        self,
        ids: Sequence[bytes],
        holders: Sequence[str],
        amounts: Sequence[int],
        reason: bytes,
    ) -> bytes:
        self._up()
        need: Counter[str] = Counter()
        for burn_id, holder, amount in zip(ids, holders, amounts, strict=True):
            if burn_id not in self.burned_ids:
                need[holder] += amount
        if any(self.balances[h] < n for h, n in need.items()):
            raise TokenRejected("ERC20InsufficientBalance", error="ERC20InsufficientBalance")
        return self._mine("expireBatch", (tuple(ids), tuple(holders), tuple(amounts), reason))

    # Chain control --------------------------------------------------------------------

    def roll_back_to(self, block_count: int) -> None:
        """Drop every block after the first `block_count` (a deep reorg) and rebuild state."""
        for number in range(block_count + 1, len(self.blocks) + 1):
            self.block_salt[number] = b"gone%d" % next(self._salt)
        self.blocks = self.blocks[:block_count]
        self._replay()

    @property
    def total_supply(self) -> int:
        return sum(self.balances.values())

    def _mine(self, function: str, args: tuple[Any, ...]) -> bytes:
        self.sent[function] += 1
        tx_hash = hashlib.sha256(b"tx%d" % next(self._salt)).digest()
        self.blocks.append(_Tx(tx_hash, function, args))
        self.block_salt[len(self.blocks)] = b"v%d" % next(self._salt)
        self._replay()
        return tx_hash

    def _replay(self) -> None:
        self.budgets, self.campaign_issued = {}, {}
        self.issued_ids, self.burned_ids = set(), set()
        self.balances, self.receipts, self.mints = Counter(), {}, Counter()
        for number, tx in enumerate(self.blocks, start=1):
            block_hash = hashlib.sha256(b"block%d" % number + self.block_salt[number]).digest()
            events = self._apply(tx, number, block_hash)
            self.receipts[tx.tx_hash] = TokenReceipt(
                tx_hash=tx.tx_hash,
                status=1,
                block_number=number,
                block_hash=block_hash,
                gas_used=21_000 + 25_000 * len(events),
                gas_limit=16_777_216,
                events=tuple(events),
            )

    def _apply(self, tx: _Tx, number: int, block_hash: bytes) -> list[TokenEvent]:
        def event(kind: str, event_id: bytes, holder: str, amount: int) -> TokenEvent:
            return TokenEvent(kind, event_id, holder, amount, tx.tx_hash, number, block_hash)

        events: list[TokenEvent] = []
        if tx.function == "setCampaignBudget":
            campaign, budget = tx.args
            self.budgets[campaign] = budget
        elif tx.function == "issueBatch":
            campaign, ids, holders, amounts = tx.args
            for issuance_id, holder, amount in zip(ids, holders, amounts, strict=True):
                if issuance_id in self.issued_ids:
                    continue
                self.issued_ids.add(issuance_id)
                self.mints[issuance_id] += 1
                self.balances[holder] += amount
                self.campaign_issued[campaign] = self.campaign_issued.get(campaign, 0) + amount
                events.append(event("Issued", issuance_id, holder, amount))
        elif tx.function == "redeem":
            burn_id, holder, amount, _ref = tx.args
            self.burned_ids.add(burn_id)
            self.balances[holder] -= amount
            events.append(event("Redeemed", burn_id, holder, amount))
        else:
            ids, holders, amounts, _reason = tx.args
            for burn_id, holder, amount in zip(ids, holders, amounts, strict=True):
                if burn_id in self.burned_ids:
                    continue
                self.burned_ids.add(burn_id)
                self.balances[holder] -= amount
                events.append(event("Expired", burn_id, holder, amount))
        return events


class Crash(Exception):
    """Raised by a checkpoint to simulate the process dying there."""


def crash_at(step: str, *, times: int = 1) -> Any:
    """A checkpoint that raises `Crash` the first `times` times it reaches `step`."""
    left = [times]

    def checkpoint(name: str) -> None:
        if name == step and left[0] > 0:
            left[0] -= 1
            raise Crash(step)

    return checkpoint


def make_campaign(session: Session, **overrides: Any) -> LoyaltyCampaign:
    """An active campaign (budget 1,000,000 unless given), created the way the API does."""
    values: dict[str, Any] = {"name": "Spring", "budget": 1_000_000}
    values.update(overrides)
    return create_campaign(session=session, payload=CampaignCreate.model_validate(values))


def make_customers(
    session_factory: sessionmaker[Session], count: int, **overrides: Any
) -> list[tuple[int, str]]:
    """`count` customers; (pk, id) of each."""
    with session_factory() as session, session.begin():
        people = [make_customer(session, name=f"c{i}", **overrides) for i in range(count)]
        return [(c.pk, c.id) for c in people]


def lots(session_factory: sessionmaker[Session]) -> list[LoyaltyIssuance]:
    """Every lot, in pk order."""
    with session_factory() as session:
        return list(session.query(LoyaltyIssuance).order_by(LoyaltyIssuance.pk))


def customer_pk(session_factory: sessionmaker[Session], customer_id: str) -> int:
    """The pk of the customer `customer_id`."""
    with session_factory() as session:
        found = session.query(Customer).filter_by(id=customer_id).one()
        return found.pk


def backdate(session_factory: sessionmaker[Session], *, expires_at: datetime) -> None:
    """Make every lot expire at `expires_at`."""
    with session_factory() as session, session.begin():
        for lot in session.query(LoyaltyIssuance):
            lot.expires_at = expires_at
            lot.earned_at = min(lot.earned_at, utcnow())
