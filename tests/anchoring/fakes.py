"""A fake AuditLedger chain with the contract's rules, and journal factories."""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

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

CODE_HASH = hashlib.sha256(b"AuditLedger").digest()
ADDRESS = "0x" + "11" * 20


@dataclass(frozen=True)
class FakeReceipt:
    tx_hash: bytes
    block_number: int
    block_hash: bytes
    gas_used: int


@dataclass(frozen=True)
class FakeEvent:
    batch_id: int
    first_seq: int
    count: int
    root: bytes
    head: bytes
    tx_hash: bytes
    block_number: int
    block_hash: bytes
    gas_used: int


@dataclass
class FakeChain:
    """Enforces AuditLedger's contiguity rule; can go down, roll back, reorg and reset."""

    down: bool = False
    code_hash_value: bytes = CODE_HASH
    events: list[FakeEvent] = field(default_factory=list)
    block_hashes: list[bytes] = field(default_factory=lambda: [b"\x00" * 32])
    receipts: dict[bytes, FakeReceipt] = field(default_factory=dict)
    sent: int = 0
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

    async def send_anchor(self, first_seq: int, count: int, root: bytes) -> bytes:
        self._up()
        expected = await self.next_seq()
        if first_seq != expected:
            raise AnchorRejected(
                f"AuditLedgerOutOfOrder({expected}, {first_seq})",
                first_seq=first_seq,
                chain_next_seq=expected,
            )
        self.sent += 1
        tx = hashlib.sha256(b"tx%d" % next(self._salt)).digest()
        block_hash = hashlib.sha256(b"block%d" % next(self._salt)).digest()
        self.block_hashes.append(block_hash)
        number = len(self.block_hashes) - 1
        event = FakeEvent(
            batch_id=len(self.events),
            first_seq=first_seq,
            count=count,
            root=root,
            head=merkle.next_head(self.head, root, first_seq, count),
            tx_hash=tx,
            block_number=number,
            block_hash=block_hash,
            gas_used=80_000,
        )
        self.events.append(event)
        self.receipts[tx] = FakeReceipt(tx, number, block_hash, 80_000)
        return tx

    async def receipt(self, tx_hash: bytes) -> FakeReceipt | None:
        self._up()
        return self.receipts.get(tx_hash)

    async def find_batch_event(self, batch_id: int, from_block: int = 0) -> FakeEvent | None:
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
        self.events[-1] = FakeEvent(**{**old.__dict__, "block_hash": new_hash})
        self.receipts[old.tx_hash] = FakeReceipt(old.tx_hash, old.block_number, new_hash, 80_000)


def fast_settings(tmp_path: object, **overrides: object) -> Settings:
    """Settings that cut a batch as soon as anything is pending."""
    values: dict[str, object] = {
        "data_dir": tmp_path,
        "batch_max_records": 4,
        "batch_max_age_seconds": 0.000001,
        "anchor_poll_seconds": 0.01,
        "anchor_retry_max_seconds": 0.05,
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
