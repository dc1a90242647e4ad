"""Journal, chain-index and loyalty rows for the view tests, written straight to the database."""

from __future__ import annotations

import hashlib
import itertools
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.anchoring import batches
from crm_ledger.db.models import (
    AuditReport,
    Batch,
    Customer,
    Deployment,
    IndexedBalance,
    IndexedBatch,
    IndexedTokenEvent,
    LoyaltyChainOp,
    LoyaltyExpiration,
    LoyaltyIssuance,
    LoyaltyRedemption,
    LoyaltyWallet,
    Record,
    new_id,
    utcnow,
)
from tests.anchoring.fakes import make_customer, make_record
from tests.loyalty.fakes import make_campaign

_salt = itertools.count()


def digest(label: str) -> bytes:
    """32 bytes named by `label`."""
    return hashlib.sha256(label.encode()).digest()


def deployments(session_factory: sessionmaker[Session], *, token: bool = True) -> None:
    """AuditLedger (and LoyaltyToken) epoch 1 rows, as if deployed."""
    with session_factory.begin() as session:
        for contract in ["AuditLedger"] + (["LoyaltyToken"] if token else []):
            session.add(
                Deployment(
                    contract=contract,
                    epoch=1,
                    chain_id=31337,
                    genesis_hash=digest("genesis"),
                    address="0x" + digest(contract).hex()[:40],
                    code_hash=digest(contract + " code"),
                    tx_hash=digest(contract + " tx"),
                    block_number=1,
                )
            )


def customer_with_records(
    session_factory: sessionmaker[Session], count: int, **overrides: Any
) -> tuple[int, str, list[str]]:
    """A customer with `count` pending interactions: (pk, id, record ids oldest first)."""
    with session_factory.begin() as session:
        customer = make_customer(session, **overrides)
        ids = [make_record(session, customer, note=f"r{n}").id for n in range(count)]
        return customer.pk, customer.id, ids


def cut(session_factory: sessionmaker[Session], max_records: int) -> int:
    """Cut one batch of up to `max_records` pending records; its id."""
    plan = batches.cut_batch(session_factory, max_records=max_records)
    assert plan is not None
    return plan.id


def mark_anchored(session_factory: sessionmaker[Session], batch_id: int) -> None:
    """Record the batch as mined (block = 100 + id)."""
    batches.mark_anchored(
        session_factory,
        batch_id=batch_id,
        epoch=1,
        tx_hash=digest(f"tx {batch_id}"),
        block_number=100 + batch_id,
        block_hash=digest(f"block {batch_id}"),
        gas_used=50_000,
    )


def index_batch(
    session_factory: sessionmaker[Session], batch_id: int, *, root: bytes | None = None
) -> None:
    """The indexer's row for the batch, as the chain has it (another `root` if given)."""
    with session_factory.begin() as session:
        batch = session.get(Batch, batch_id)
        assert batch is not None
        session.add(
            IndexedBatch(
                epoch=1,
                batch_id=batch.id,
                first_seq=batch.first_seq,
                count=batch.count,
                root=root if root is not None else batch.root,
                head=batch.head,
                tx_hash=digest(f"tx {batch_id}"),
                block_number=100 + batch_id,
                block_hash=digest(f"block {batch_id}"),
                log_index=0,
            )
        )


def wallet(session_factory: sessionmaker[Session], customer_pk: int, address: str) -> None:
    """A loyalty address for the customer."""
    with session_factory.begin() as session:
        session.add(LoyaltyWallet(customer_pk=customer_pk, address=address))


def balance(session_factory: sessionmaker[Session], address: str, points: int) -> None:
    """The indexed balance of `address`."""
    with session_factory.begin() as session:
        session.add(
            IndexedBalance(epoch=1, address=address.lower(), balance=points, block_number=7)
        )


def campaign_pk(session_factory: sessionmaker[Session]) -> int:
    """A fresh campaign's pk."""
    with session_factory.begin() as session:
        return make_campaign(session, name=f"Campaign {next(_salt)}").pk


def op(session_factory: sessionmaker[Session], kind: str, status: str = "confirmed") -> int:
    """A loyalty chain op row; its pk."""
    with session_factory.begin() as session:
        row = LoyaltyChainOp(kind=kind, status=status, entries=1)
        session.add(row)
        session.flush()
        return row.pk


def lot(
    session_factory: sessionmaker[Session],
    *,
    customer_pk: int,
    campaign: int,
    points: int,
    status: str = "issued",
    address: str | None = None,
    op_pk: int | None = None,
    block_number: int | None = 7,
    earned_at: datetime | None = None,
) -> tuple[str, bytes]:
    """A lot (issuance); (its public id, its issuance id)."""
    issuance_id = digest(f"lot {next(_salt)}")
    with session_factory.begin() as session:
        row = LoyaltyIssuance(
            id=new_id(),
            issuance_id=issuance_id,
            campaign_pk=campaign,
            customer_pk=customer_pk,
            source="award",
            award_key=f"test:{issuance_id.hex()}",
            points=points,
            remaining=points,
            status=status,
            address=address,
            op_pk=op_pk,
            tx_hash=digest("lot tx") if status == "issued" else None,
            block_number=block_number if status == "issued" else None,
            earned_at=earned_at or utcnow(),
        )
        session.add(row)
        return row.id, issuance_id


def redemption(
    session_factory: sessionmaker[Session],
    *,
    customer_pk: int,
    address: str,
    points: int,
    status: str = "redeemed",
    op_pk: int | None = None,
) -> tuple[str, bytes]:
    """A redemption; (its id, its burn id)."""
    burn_id = digest(f"burn {next(_salt)}")
    with session_factory.begin() as session:
        row = LoyaltyRedemption(
            id=new_id(),
            customer_pk=customer_pk,
            points=points,
            reward_ref="mug",
            burn_id=burn_id,
            chain_ref=digest("ref"),
            address=address,
            status=status,
            op_pk=op_pk,
            tx_hash=digest("redeem tx") if status == "redeemed" else None,
            block_number=8 if status == "redeemed" else None,
        )
        session.add(row)
        return row.id, burn_id


def expiry(
    session_factory: sessionmaker[Session],
    *,
    customer_pk: int,
    lot_id: str,
    address: str,
    points: int,
    status: str = "expired",
) -> bytes:
    """The expiry of a lot, burnt under the lot's issuance id; the burn id."""
    with session_factory.begin() as session:
        issued = session.scalars(select(LoyaltyIssuance).where(LoyaltyIssuance.id == lot_id)).one()
        session.add(
            LoyaltyExpiration(
                issuance_pk=issued.pk,
                burn_id=issued.issuance_id,
                customer_pk=customer_pk,
                address=address,
                points=points,
                reason="campaign over",
                reason_code=digest("reason"),
                status=status,
                tx_hash=digest("expire tx") if status == "expired" else None,
                block_number=9 if status == "expired" else None,
            )
        )
        return issued.issuance_id


def indexed_token_event(
    session_factory: sessionmaker[Session], event: str, token_id: bytes, amount: int
) -> None:
    """An indexed LoyaltyToken event for `token_id`."""
    with session_factory.begin() as session:
        session.add(
            IndexedTokenEvent(
                epoch=1,
                event=event,
                token_id=token_id,
                amount=amount,
                tx_hash=digest(f"{event} tx {token_id.hex()}"),
                block_number=50,
                block_hash=digest("block 50"),
                log_index=next(_salt),
            )
        )


def audit_report(session_factory: sessionmaker[Session], **values: Any) -> None:
    """A stored ledger-audit run."""
    with session_factory.begin() as session:
        session.add(
            AuditReport(
                status=values.pop("status", "done"),
                started_at=utcnow() - timedelta(minutes=1),
                finished_at=values.pop("finished_at", utcnow()),
                records_checked=values.pop("records_checked", 0),
                **values,
            )
        )


def set_created_at(
    session_factory: sessionmaker[Session], record_ids: list[str], moment: datetime
) -> None:
    """Backdate records."""
    with session_factory.begin() as session:
        session.execute(update(Record).where(Record.id.in_(record_ids)).values(created_at=moment))


def customer_pk_of(session_factory: sessionmaker[Session], customer_id: str) -> int:
    """The pk of a customer."""
    with session_factory() as session:
        return int(session.scalars(select(Customer.pk).where(Customer.id == customer_id)).one())
