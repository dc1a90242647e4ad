"""An audit's view of the fake chain, a small anchored journal, and direct SQL tampering."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from crm_ledger.anchoring.anchorer import Anchorer, DeploymentRef
from crm_ledger.db.models import Customer, Deployment, Record
from crm_ledger.journal.customers import personal_fields
from crm_ledger.journal.receipts import AUDIT_LEDGER
from crm_ledger.verifier.chain import BatchAnchoredEvent
from tests.anchoring.fakes import (
    ADDRESS,
    CODE_HASH,
    FakeChain,
    add_records,
    fast_settings,
)

CHAIN_ID = 31337
DEPLOYMENT = DeploymentRef(epoch=1, address=ADDRESS, code_hash=CODE_HASH, block_number=0)


@dataclass
class FakeAuditChain:
    """`AuditChain` over a `FakeChain`: what the contract's views and events would say."""

    fake: FakeChain
    chain_id_value: int = CHAIN_ID

    async def chain_id(self) -> int:
        self.fake._up()
        return self.chain_id_value

    async def genesis_hash(self) -> bytes:
        self.fake._up()
        return self.fake.block_hashes[0]

    async def code_hash(self, address: str) -> bytes:
        return await self.fake.code_hash(address)

    async def next_seq(self) -> int:
        return await self.fake.next_seq()

    async def head(self) -> bytes:
        self.fake._up()
        return self.fake.head

    async def batch_count(self) -> int:
        self.fake._up()
        return len(self.fake.events)

    async def batch(self, batch_id: int) -> BatchAnchoredEvent | None:
        return await self.fake.find_batch_event(batch_id)

    async def batch_events(
        self, from_block: int, to_block: int | None = None
    ) -> list[BatchAnchoredEvent]:
        self.fake._up()
        last = math.inf if to_block is None else to_block
        return [e for e in self.fake.events if from_block <= e.block_number <= last]

    async def find_batch_event(
        self, batch_id: int, from_block: int = 0
    ) -> BatchAnchoredEvent | None:
        return await self.fake.find_batch_event(batch_id, from_block)

    async def receipt(self, tx_hash: bytes) -> BatchAnchoredEvent | None:
        self.fake._up()
        return next((e for e in self.fake.events if e.tx_hash == tx_hash), None)

    async def block_hash(self, number: int) -> bytes | None:
        return await self.fake.block_hash(number)


def record_deployment(session_factory: sessionmaker[Session], chain: FakeChain) -> None:
    """The deployments row the service would have written for the fake chain's AuditLedger."""
    with session_factory.begin() as session:
        session.add(
            Deployment(
                contract=AUDIT_LEDGER,
                epoch=DEPLOYMENT.epoch,
                chain_id=CHAIN_ID,
                genesis_hash=chain.block_hashes[0],
                address=ADDRESS,
                code_hash=CODE_HASH,
                tx_hash=b"\x01" * 32,
                block_number=0,
            )
        )


async def anchor_all(
    session_factory: sessionmaker[Session], chain: FakeChain, tmp_path: Path, **settings: Any
) -> None:
    """Run the anchorer until every pending record is anchored on `chain`."""
    anchorer = Anchorer(
        session_factory=session_factory,
        chain=chain,
        deployment=DEPLOYMENT,
        settings=fast_settings(tmp_path, **settings),
    )
    for _ in range(200):
        if not await anchorer.step():
            return
    raise AssertionError("anchorer still busy after 200 rounds")


async def build_ledger(
    session_factory: sessionmaker[Session],
    chain: FakeChain,
    tmp_path: Path,
    *,
    customers: int = 3,
    each: int = 4,
) -> list[str]:
    """An anchored journal of `customers` x `each` interleaved records in batches of 4."""
    record_deployment(session_factory, chain)
    ids = add_records(session_factory, customers=customers, each=each)
    await anchor_all(session_factory, chain, tmp_path)
    return ids


def seqs_of(session_factory: sessionmaker[Session], customer_name: str) -> list[int]:
    """The seqs of one customer's records (customers from `add_records` are named c0, c1...)."""
    with session_factory() as session:
        named = [
            customer.pk
            for customer in session.scalars(select(Customer))
            if personal_fields(session, customer).name == customer_name
        ]
        return [
            seq
            for seq in session.scalars(
                select(Record.seq)
                .where(Record.customer_pk.in_(named), Record.seq.is_not(None))
                .order_by(Record.seq)
            )
            if seq is not None
        ]


def tamper(database_url: str, statements: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """Run SQL behind the service's back, on a connection of its own, in one transaction."""
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            for statement, parameters in statements:
                result = conn.execute(text(statement), parameters)
                assert result.rowcount != 0, f"tampering changed nothing: {statement}"
    finally:
        engine.dispose()


def row(database_url: str, query: str, **parameters: Any) -> Any:
    """One row read on a connection of its own."""
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return conn.execute(text(query), parameters).one()
    finally:
        engine.dispose()
