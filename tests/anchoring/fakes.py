"""A fake AuditLedger chain with the contract's rules and a node's mempool, and journal
factories."""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.chain.contract import Fees, SentTransaction
from crm_ledger.config import Settings
from crm_ledger.db.models import Customer, Record, new_id
from crm_ledger.errors import AnchorRejected, ChainUnavailable
from crm_ledger.journal.privacy import (
    PersonalFields,
    keyring_of,
    new_data_key,
    seal_personal,
    wrap_data_key,
)
from crm_ledger.ledger import merkle
from crm_ledger.ledger.canonical import canonical_json, commitment, new_customer_key
from crm_ledger.ledger.leaf import RecordKind
from crm_ledger.verifier.chain import BatchAnchoredEvent

CODE_HASH = hashlib.sha256(b"AuditLedger").digest()
ADDRESS = "0x" + "11" * 20
GWEI = 10**9


@dataclass(frozen=True)
class FakeTransaction:
    sent: SentTransaction
    first_seq: int
    count: int
    root: bytes


@dataclass
class FakeChain:
    """Enforces AuditLedger's contiguity rule; can go down, roll back, reorg and reset.

    With `automine` off, sent transactions wait in a mempool (one per nonce; a replacement must
    raise both fee caps by 10 %, as geth requires) until `mine()` includes those whose max fee
    covers `base_fee`, or `mine_transaction(hash)` includes one, as another node might.
    """

    down: bool = False
    code_hash_value: bytes = CODE_HASH
    events: list[BatchAnchoredEvent] = field(default_factory=list)
    block_hashes: list[bytes] = field(default_factory=lambda: [b"\x00" * 32])
    receipts: dict[bytes, BatchAnchoredEvent] = field(default_factory=dict)
    sent: int = 0
    automine: bool = True
    base_fee: int = GWEI
    priority_fee: int = GWEI
    mined_nonce: int = 0
    mempool: dict[int, FakeTransaction] = field(default_factory=dict)
    transactions: list[FakeTransaction] = field(default_factory=list)
    _salt: itertools.count[int] = field(default_factory=itertools.count)

    def _up(self) -> None:
        if self.down:
            raise ChainUnavailable("fake chain at http://127.0.0.1:1 is down")

    @property
    def head(self) -> bytes:
        return self.events[-1].head if self.events else merkle.ZERO_HASH

    async def code_hash(self, address: str) -> bytes:
        self._up()
        return self.code_hash_value

    async def next_seq(self) -> int:
        self._up()
        return self.events[-1].first_seq + self.events[-1].count if self.events else 0

    async def block_hash(self, number: int) -> bytes | None:
        self._up()
        return self.block_hashes[number] if number < len(self.block_hashes) else None

    async def fee_quote(self) -> Fees:
        self._up()
        return Fees(2 * self.base_fee + self.priority_fee, self.priority_fee)

    async def account_nonce(self) -> int:
        self._up()
        return self.mined_nonce

    async def sent_transaction(self, tx_hash: bytes) -> SentTransaction | None:
        self._up()
        pending = [tx.sent for tx in self.mempool.values() if tx.sent.tx_hash == tx_hash]
        return pending[0] if pending else None

    async def send_anchor(self, first_seq: int, count: int, root: bytes) -> bytes:
        return (await self.send_anchor_transaction(first_seq, count, root)).tx_hash

    async def send_anchor_transaction(
        self,
        first_seq: int,
        count: int,
        root: bytes,
        *,
        nonce: int | None = None,
        fees: Fees | None = None,
    ) -> SentTransaction:
        self._up()
        expected = await self.next_seq()
        if first_seq != expected:
            raise AnchorRejected(
                f"AuditLedgerOutOfOrder({expected}, {first_seq})",
                first_seq=first_seq,
                chain_next_seq=expected,
            )
        if nonce is None:
            nonce = max(self.mempool, default=self.mined_nonce - 1) + 1
        if nonce < self.mined_nonce:
            raise ChainUnavailable("the node at http://127.0.0.1:1 answered: nonce too low")
        fees = fees or await self.fee_quote()
        replaced = self.mempool.get(nonce)
        if replaced is not None and (
            fees.max_fee_per_gas * 10 < replaced.sent.fees.max_fee_per_gas * 11
            or fees.max_priority_fee_per_gas * 10 < replaced.sent.fees.max_priority_fee_per_gas * 11
        ):
            raise ChainUnavailable(
                "the node at http://127.0.0.1:1 answered: replacement transaction underpriced"
            )
        self.sent += 1
        tx_hash = hashlib.sha256(b"tx%d" % next(self._salt)).digest()
        transaction = FakeTransaction(SentTransaction(tx_hash, nonce, fees), first_seq, count, root)
        self.mempool[nonce] = transaction
        self.transactions.append(transaction)
        if self.automine:
            self.mine()
        return transaction.sent

    def mine(self) -> None:
        """Include the pending transactions, in nonce order, while each one's fee suffices."""
        while (tx := self.mempool.get(self.mined_nonce)) is not None:
            if tx.sent.fees.max_fee_per_gas < self.base_fee:
                return
            self.mine_transaction(tx.sent.tx_hash)

    def mine_transaction(self, tx_hash: bytes) -> None:
        """Include the transaction `tx_hash`, replaced or not (another node still had it)."""
        tx = next(tx for tx in self.transactions if tx.sent.tx_hash == tx_hash)
        assert tx.sent.nonce == self.mined_nonce, "a nonce is mined once, in order"
        del self.mempool[tx.sent.nonce]
        self.mined_nonce += 1
        next_seq = self.events[-1].first_seq + self.events[-1].count if self.events else 0
        assert tx.first_seq == next_seq, "the fake mines batches in order only"
        block_hash = hashlib.sha256(b"block%d" % next(self._salt)).digest()
        self.block_hashes.append(block_hash)
        number = len(self.block_hashes) - 1
        event = BatchAnchoredEvent(
            batch_id=len(self.events),
            first_seq=tx.first_seq,
            count=tx.count,
            root=tx.root,
            head=merkle.next_head(self.head, tx.root, tx.first_seq, tx.count),
            tx_hash=tx_hash,
            block_number=number,
            block_hash=block_hash,
            log_index=0,
            gas_used=80_000,
        )
        self.events.append(event)
        self.receipts[tx_hash] = event

    async def receipt(self, tx_hash: bytes) -> BatchAnchoredEvent | None:
        self._up()
        return self.receipts.get(tx_hash)

    async def find_batch_event(
        self, batch_id: int, from_block: int = 0
    ) -> BatchAnchoredEvent | None:
        self._up()
        return self.events[batch_id] if batch_id < len(self.events) else None

    def roll_back_to(self, batch_count: int) -> None:
        """Drop every batch from `batch_count` on, and their blocks (a deep reorg)."""
        for event in self.events[batch_count:]:
            del self.receipts[event.tx_hash]
        self.events = self.events[:batch_count]
        keep = self.events[-1].block_number + 1 if self.events else 1
        self.block_hashes = self.block_hashes[:keep]

    def remine_last(self) -> None:
        """Re-include the last batch's transaction in a new block (same batch, new place)."""
        old = self.events[-1]
        new_hash = hashlib.sha256(b"reorg%d" % next(self._salt)).digest()
        self.block_hashes[old.block_number] = new_hash
        self.events[-1] = self.receipts[old.tx_hash] = replace(old, block_hash=new_hash)


def fast_settings(tmp_path: object, **overrides: object) -> Settings:
    """Settings that cut a batch as soon as anything is pending."""
    values: dict[str, object] = {
        "data_dir": tmp_path,
        "batch_max_records": 4,
        "batch_max_age_seconds": 0.000001,
        "anchor_poll_seconds": 0.01,
        "anchor_retry_max_seconds": 0.05,
        # These tests step the anchorer by hand and expect each step to check the chain.
        "anchor_idle_check_seconds": 0,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def make_customer(
    session: Session,
    *,
    name: str | None = "Ada",
    email: str | None = "ada@example.com",
    phone: str | None = None,
    **overrides: object,
) -> Customer:
    """A customer with a fresh key and personal fields sealed as the journal seals them."""
    customer_id = new_id()
    data_key = new_data_key()
    fields = PersonalFields(name=name, email=email, phone=phone)
    keyring = keyring_of(session)
    values: dict[str, object] = {
        "id": customer_id,
        "key": new_customer_key(),
        "wrapped_data_key": wrap_data_key(keyring, customer_id=customer_id, data_key=data_key),
        "personal": seal_personal(data_key, customer_id=customer_id, fields=fields),
        "email_index": keyring.current.email_index(email) if email is not None else None,
    }
    values.update(overrides)
    customer = Customer(**values)
    session.add(customer)
    session.flush()
    return customer


def make_record(session: Session, customer: Customer, *, note: str = "call") -> Record:
    """A pending interaction record committed the way the API commits one."""
    record = Record(customer_pk=customer.pk, kind=int(RecordKind.INTERACTION), commitment=b"")
    session.add(record)
    session.flush()
    content = canonical_json(
        {
            "v": 1,
            "id": record.id,
            "customer_id": customer.id,
            "kind": "interaction",
            "recorded_at": datetime.now(UTC).isoformat(),
            "body": {"type": note},
        }
    )
    assert customer.key is not None
    record.content = content
    record.commitment = commitment(customer.key, content)
    return record


def add_records(session_factory: sessionmaker[Session], *, customers: int, each: int) -> list[str]:
    """Insert `customers` times `each` pending records, interleaved; returns record ids.

    The customers are named c0, c1...; their external refs number every customer of the
    journal (c0, c1... on the first call), so raw SQL can find them.
    """
    ids = []
    with session_factory() as session, session.begin():
        known = session.scalar(select(func.count()).select_from(Customer)) or 0
        people = [
            make_customer(session, name=f"c{i}", external_ref=f"c{known + i}")
            for i in range(customers)
        ]
        for n in range(each):
            for person in people:
                ids.append(make_record(session, person, note=f"n{n}").id)
    return ids
