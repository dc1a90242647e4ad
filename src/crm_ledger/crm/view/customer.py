"""The customer 360 view: profile and shop ids, records counted by ledger state, the loyalty
balance the chain reports, the latest audit's verdict, and a page of the timeline.

Exports: `customer_view`, `DEFAULT_TIMELINE_SIZE`, `MAX_TIMELINE_SIZE`.

Personal fields are sealed at rest (`journal.privacy`): the view opens them only when the
caller asks for them (`show_personal`).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import ColumnElement, and_, case, false, func, select
from sqlalchemy.orm import Session

from crm_ledger.crm.schemas import (
    CustomerProfile,
    CustomerView,
    LedgerCounts,
    LoyaltySummary,
    ShopCustomerId,
    Timeline,
)
from crm_ledger.crm.view.common import (
    Epochs,
    bad_parameter,
    current_epochs,
    encode_cursor,
)
from crm_ledger.crm.view.integrity import customer_integrity
from crm_ledger.crm.view.timeline import check_kinds, decode_timeline_cursor, timeline_page
from crm_ledger.db.models import (
    Batch,
    BatchStatus,
    Customer,
    IndexedBalance,
    IndexedBatch,
    IngestCustomerLink,
    IngestSource,
    LoyaltyWallet,
    Record,
)
from crm_ledger.journal.customers import get_customer, personal_fields_of, public_fields
from crm_ledger.journal.privacy import PersonalFields, keyring_of
from crm_ledger.ledger.leaf import RecordKind

__all__ = ["DEFAULT_TIMELINE_SIZE", "MAX_TIMELINE_SIZE", "customer_view"]

DEFAULT_TIMELINE_SIZE = 50
MAX_TIMELINE_SIZE = 200


def customer_view(
    *,
    session: Session,
    customer_id: str,
    timeline_limit: int = DEFAULT_TIMELINE_SIZE,
    timeline_cursor: str | None = None,
    kinds: Sequence[str] | None = None,
    show_personal: bool = True,
) -> CustomerView:
    """The 360 view of one customer; raises `NotFound`, or `Unprocessable` for bad parameters.

    `show_personal=False` gives the pseudonymous view: name, email and phone null.
    """
    if not 1 <= timeline_limit <= MAX_TIMELINE_SIZE:
        raise bad_parameter("timeline_limit", f"must be from 1 to {MAX_TIMELINE_SIZE}")
    wanted = check_kinds(kinds)
    after = decode_timeline_cursor(timeline_cursor) if timeline_cursor is not None else None
    customer = get_customer(session=session, customer_id=customer_id)
    epochs = current_epochs(session)
    items = timeline_page(session, customer.pk, epochs, wanted, after, timeline_limit + 1)
    page = items[:timeline_limit]
    next_cursor = None
    if len(items) > timeline_limit:
        last_key = page[-1][0]
        next_cursor = encode_cursor(
            {"t": last_key[0].isoformat(), "r": last_key[1], "k": last_key[2]}
        )
    return CustomerView(
        customer=_profile(
            customer,
            personal_fields_of(keyring_of(session), customer) if show_personal else None,
        ).model_copy(update={"external_ids": _shop_ids(session, customer.pk)}),
        records=_record_counts(session, customer.pk, epochs),
        loyalty=_loyalty(session, customer.pk, epochs),
        integrity=customer_integrity(session=session, customer=customer),
        timeline=Timeline(items=[item for _, item in page], next_cursor=next_cursor),
    )


def _profile(customer: Customer, personal: PersonalFields | None) -> CustomerProfile:
    return CustomerProfile(**public_fields(customer, personal))


def _shop_ids(session: Session, customer_pk: int) -> list[ShopCustomerId]:
    """Commerce ingest (issue 11): the customer's ids in the shops that send webhooks."""
    rows = session.execute(
        select(IngestSource.id, IngestSource.platform, IngestCustomerLink.external_id)
        .join(IngestSource, IngestSource.pk == IngestCustomerLink.source_pk)
        .where(IngestCustomerLink.customer_pk == customer_pk)
        .order_by(IngestCustomerLink.pk)
    ).tuples()
    return [
        ShopCustomerId(source_id=source_id, platform=platform, external_id=external_id)
        for source_id, platform, external_id in rows
    ]


def _confirmed_batch(epoch: int | None) -> ColumnElement[bool]:
    """The indexed event of the record's batch, in the current epoch, matching the journal."""
    if epoch is None:
        return false()
    return and_(
        IndexedBatch.epoch == epoch,
        IndexedBatch.batch_id == Batch.id,
        IndexedBatch.first_seq == Batch.first_seq,
        IndexedBatch.count == Batch.count,
        IndexedBatch.root == Batch.root,
    )


def _record_counts(session: Session, customer_pk: int, epochs: Epochs) -> LedgerCounts:
    # Counted per batch first: the chain check then runs once per batch, not once per record.
    per_batch = (
        select(Record.batch_id, func.count().label("n"))
        # Access records are reads of the customer, not their history: not counted here.
        .where(Record.customer_pk == customer_pk, Record.kind != int(RecordKind.ACCESS))
        .group_by(Record.batch_id)
        .subquery()
    )
    confirmed = select(IndexedBatch.pk).where(_confirmed_batch(epochs.ledger)).exists()
    total, confirmed_count, anchored_count = session.execute(
        select(
            func.sum(per_batch.c.n),
            func.sum(case((confirmed, per_batch.c.n), else_=0)),
            func.sum(
                case(
                    (and_(~confirmed, Batch.status == BatchStatus.ANCHORED.value), per_batch.c.n),
                    else_=0,
                )
            ),
        )
        .select_from(per_batch)
        .outerjoin(Batch, Batch.id == per_batch.c.batch_id)
    ).one()
    confirmed_n, anchored_n = int(confirmed_count or 0), int(anchored_count or 0)
    return LedgerCounts(
        pending=int(total or 0) - confirmed_n - anchored_n,
        anchored=anchored_n,
        confirmed=confirmed_n,
    )


def _loyalty(session: Session, customer_pk: int, epochs: Epochs) -> LoyaltySummary | None:
    address = session.scalar(
        select(LoyaltyWallet.address).where(LoyaltyWallet.customer_pk == customer_pk)
    )
    if address is None:
        return None
    holder = str(address).lower()
    balance = None
    if epochs.token is not None:
        balance = session.scalar(
            select(IndexedBalance.balance).where(
                IndexedBalance.epoch == epochs.token, IndexedBalance.address == holder
            )
        )
    return LoyaltySummary(
        address=str(address),
        balance=int(balance or 0),
        as_of_block=epochs.token_indexed_through,
    )
