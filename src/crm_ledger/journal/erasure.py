"""Erasure (GDPR / RODO): delete a customer's personal data and keep every proof valid.

Exports: `ErasureResult`, `erase_customer`, `CopyEraser`, `attach_copy_erasers`,
`copy_erasers_for_engine`, `LOCK_TIMEOUT_MS`.

An erasure, in one transaction:

- destroys the customer's data key (their sealed name, email and phone, and the email's blind
  index go with it), clears their external ref and tags and deletes their commitment key, so
  no commitment of theirs can be opened or confirmed by guessing any more;
- erases every other copy of their personal data the service keeps: each is one function
  `erase(session, customer_pk)` (a `CopyEraser`). The journal's own (stored idempotent answers
  that concern them, the free-text `reward_ref` of their redemptions) always run; those of
  the packages above the journal that keep a copy (commerce ingest) are attached to the engine
  by whoever builds the process (`attach_copy_erasers`, called by `runtime.Runtime`), so the
  journal imports none of them. An engine with none attached refuses to erase (`ConfigError`)
  rather than skip a copy;
- deletes the content of every record of theirs, pending ones included; each record keeps its
  commitment and, once sequenced, its leaf (seq, kind, previous leaf hash, leaf hash), so every
  leaf, batch root, head and receipt stays valid;
- writes an erasure record (kind `erasure`) for the customer, so the ledger shows when it
  happened. Its document is `{"v": 1, "id", "customer_id", "kind": "erasure", "recorded_at",
  "body": {"erased_records": N}}`: no personal data. It is committed with a fresh random key
  of its own (`Record.key`), not with the customer's (deleted) key nor any key an outsider could
  know, so its commitment cannot be tied to the customer by anyone outside the service. The
  anchorer chains it after the customer's last record, which seals their history: no record
  of theirs from before the erasure can later disappear unnoticed.

Erasing twice is harmless: the second call changes nothing and reports the first erasure. The
caller owns the transaction (writers flush, they do not commit).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, func, insert, select, text, update
from sqlalchemy.orm import Session

from crm_ledger.db.models import (
    Customer,
    IdempotencyEntry,
    IdempotencySubject,
    LoyaltyRedemption,
    Record,
    new_id,
    utcnow,
)
from crm_ledger.errors import ConfigError, NotFound
from crm_ledger.journal.records import DOCUMENT_VERSION, kind_name
from crm_ledger.journal.schemas import format_timestamp, is_public_id
from crm_ledger.ledger.canonical import canonical_json, commitment, new_customer_key
from crm_ledger.ledger.leaf import RecordKind

#: The longest an erasure waits for a row lock on PostgreSQL before giving up (to be retried).
LOCK_TIMEOUT_MS = 500


def _erase_idempotent_answers(session: Session, customer_pk: int) -> None:
    """Stored answers that concern the customer lose their body; a replay answers 410."""
    concerning = select(IdempotencySubject.idempotency_pk).where(
        IdempotencySubject.customer_pk == customer_pk
    )
    session.execute(
        update(IdempotencyEntry)
        .where(IdempotencyEntry.pk.in_(concerning), IdempotencyEntry.erased_at.is_(None))
        .values(response_sealed=None, erased_at=utcnow())
    )


def _erase_reward_refs(session: Session, customer_pk: int) -> None:
    """The free-text reward references of the customer's redemptions (left empty)."""
    session.execute(
        update(LoyaltyRedemption)
        .where(LoyaltyRedemption.customer_pk == customer_pk)
        .values(reward_ref="")
    )


#: Erases one copy of a customer's personal data kept outside the customer row and the
#: records: `erase(session, customer_pk)`, flushing; the caller commits.
CopyEraser = Callable[[Session, int], None]

#: The copies the journal's own tables keep; they run after the attached ones.
_JOURNAL_ERASERS: tuple[CopyEraser, ...] = (_erase_idempotent_answers, _erase_reward_refs)
_ENGINE_ATTRIBUTE = "_crm_ledger_copy_erasers"


def attach_copy_erasers(engine: Engine, erasers: Sequence[CopyEraser]) -> None:
    """Make `erasers` (one per package above the journal that keeps a copy) the ones every
    erasure on `engine` runs, in order, before the journal's own."""
    setattr(engine, _ENGINE_ATTRIBUTE, tuple(erasers))


def copy_erasers_for_engine(engine: Engine) -> tuple[CopyEraser, ...] | None:
    """The erasers attached to `engine`, or None when nobody attached any."""
    erasers = getattr(engine, _ENGINE_ATTRIBUTE, None)
    return erasers if isinstance(erasers, tuple) else None


def _copy_erasers(session: Session) -> tuple[CopyEraser, ...]:
    """Every eraser an erasure in `session` runs; `ConfigError` when none were attached.

    They run before the customer row is cleared (commerce ingest reads the customer's email and
    shop ids to find raw deliveries not mapped yet).
    """
    bind = session.get_bind()
    engine = bind if isinstance(bind, Engine) else bind.engine
    attached = copy_erasers_for_engine(engine)
    if attached is None:
        raise ConfigError(
            "no copy erasers are attached to this database's engine: an erasure would leave "
            "copies of personal data behind (the service attaches them in `runtime.Runtime`)"
        )
    return attached + _JOURNAL_ERASERS


@dataclass(frozen=True, slots=True)
class ErasureResult:
    """What an erasure did (or, when `already_erased`, what the earlier one did)."""

    customer_id: str
    erased_at: datetime
    erased_records: int
    erasure_record_id: str
    already_erased: bool


def erase_customer(*, session: Session, customer_id: str) -> ErasureResult:
    """Erase the personal data of customer `customer_id`; raises `NotFound`.

    On PostgreSQL the customer row is locked FOR UPDATE first: record writers hold it FOR
    KEY SHARE, so the erasure waits for records being written for the customer and sees them, and
    writers that come after see the key gone and are refused.

    The anchorer locks records, then customers (to move their last leaf hash); the erasure
    locks the customer, then their records. Should the two ever wait on each other, the erasure
    must be the one to give up, not the anchorer: its lock waits are capped at
    `LOCK_TIMEOUT_MS`, well under PostgreSQL's deadlock check (1 s by default), and the caller
    retries on `LockNotAvailable` (SQLSTATE 55P03).
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_MS}ms'"))
    customer = None
    if is_public_id(customer_id):
        customer = session.execute(
            select(Customer.pk, Customer.id, Customer.erased_at)
            .where(Customer.id == customer_id.lower())
            .with_for_update()
        ).first()
    if customer is None:
        raise NotFound(f"no customer with id {customer_id!r}", customer_id=customer_id)
    if customer.erased_at is not None:
        return _earlier_erasure(session, customer.pk, customer.id, customer.erased_at)

    for erase in _copy_erasers(session):
        erase(session, customer.pk)
    now = utcnow()
    session.execute(
        update(Customer)
        .where(Customer.pk == customer.pk)
        .values(
            wrapped_data_key=None,
            personal=None,
            email_index=None,
            external_ref=None,
            tags=[],
            key=None,
            erased_at=now,
        )
    )
    erased = _erasable_records(session, customer.pk)
    session.execute(
        update(Record)
        .where(Record.customer_pk == customer.pk, Record.kind != int(RecordKind.ERASURE))
        .values(content=None)
    )
    record_id = new_id()
    content = canonical_json(
        {
            "v": DOCUMENT_VERSION,
            "id": record_id,
            "customer_id": customer.id,
            "kind": kind_name(RecordKind.ERASURE),
            "recorded_at": format_timestamp(now),
            "body": {"erased_records": erased},
        }
    )
    own_key = new_customer_key()
    session.execute(
        insert(Record).values(
            id=record_id,
            customer_pk=customer.pk,
            kind=int(RecordKind.ERASURE),
            content=content,
            commitment=commitment(own_key, content),
            key=own_key,
            created_at=now,
        )
    )
    return ErasureResult(
        customer_id=customer.id,
        erased_at=now,
        erased_records=erased,
        erasure_record_id=record_id,
        already_erased=False,
    )


def _earlier_erasure(
    session: Session, customer_pk: int, customer_id: str, erased_at: datetime
) -> ErasureResult:
    erasure_id = session.scalar(
        select(Record.id)
        .where(Record.customer_pk == customer_pk, Record.kind == int(RecordKind.ERASURE))
        .order_by(Record.pk)
        .limit(1)
    )
    return ErasureResult(
        customer_id=customer_id,
        erased_at=erased_at,
        erased_records=_erasable_records(session, customer_pk),
        erasure_record_id=erasure_id or "",
        already_erased=True,
    )


def _erasable_records(session: Session, customer_pk: int) -> int:
    """The customer's records other than erasure records."""
    count = session.scalar(
        select(func.count())
        .select_from(Record)
        .where(Record.customer_pk == customer_pk, Record.kind != int(RecordKind.ERASURE))
    )
    return int(count or 0)
