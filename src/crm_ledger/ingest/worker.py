"""The ingest worker: maps stored deliveries to records, settles clawbacks, purges old bodies.

Exports: `IngestWorker`, `map_pending`.

Each step reads and parses up to `ingest_batch_size` pending deliveries (hashing the order
states) and plans each run of consecutive order deliveries (`ingest.batch`: buyers matched, new
customers sealed, record documents and commitments computed) in a read-only transaction, then
maps them in delivery order in one write transaction, which holds the write lock for the
checks and the writes only. The records a delivery writes and its status (`mapped`, body
deleted) commit together, so a process killed mid-step maps the delivery again after restart,
and only once. Consecutive order deliveries are mapped together by `ingest.batch` (a few
statements for the whole run, in a savepoint; planned again under the lock if the rows its plan
was made from changed); any other delivery, and every delivery of a run that could not be
written together, is mapped alone in a savepoint of its own. Statuses are written with one
UPDATE per kind (mapped, failed) before each delivery mapped alone and at the end. A delivery
that cannot be mapped is `failed` with its error; the others go on. The database being down is
`Unavailable`: the supervisor backs off and the deliveries stay pending. The webhook endpoint
wakes the worker after each delivery it stores.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import cast

from sqlalchemy import Table, bindparam, exists, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.config import Settings
from crm_ledger.db.models import IngestDelivery, IngestOrder, IngestSource, utcnow
from crm_ledger.db.session import reading
from crm_ledger.errors import LedgerError, Unavailable
from crm_ledger.ingest.apply import Applied, apply_event, order_state_hash
from crm_ledger.ingest.batch import OrderBatch
from crm_ledger.ingest.clawback import run_clawbacks
from crm_ledger.ingest.inbox import DeliveryStatus, purge_failed_bodies
from crm_ledger.ingest.payloads import Event, OrderState, Redact, parse_delivery
from crm_ledger.ingest.signatures import Platform

log = logging.getLogger(__name__)

#: How often the worker deletes the bodies of failed deliveries past retention.
PURGE_INTERVAL_SECONDS = 600.0
#: How long a step that found less than a full batch waits before the next one.
LINGER_SECONDS = 0.05


def map_pending(session_factory: sessionmaker[Session], *, limit: int) -> int:
    """Map up to `limit` pending deliveries; returns how many were handled (mapped or failed)."""
    parsed, plans = _plan_pending(session_factory, limit=limit)
    if not parsed:
        return 0
    # No autoflush: changes are flushed once per run of orders or per delivery, not before
    # every query the mapping makes.
    with session_factory(autoflush=False) as session, session.begin():
        # Only those still pending: one erased meanwhile is failed, its body gone.
        rows = session.execute(
            select(IngestDelivery.pk, IngestDelivery.id, IngestDelivery.topic, IngestSource)
            .join(IngestSource, IngestSource.pk == IngestDelivery.source_pk)
            .where(
                IngestDelivery.pk.in_(list(parsed)),
                IngestDelivery.status == DeliveryStatus.PENDING.value,
            )
            .order_by(IngestDelivery.pk)
            .with_for_update(of=_DELIVERIES)
        ).all()
        marks = _Marks()
        run: list[_OrderDelivery] = []
        withdrawn: set[int] = set()
        for index, (pk, delivery_id, topic, source) in enumerate(rows):
            if pk in withdrawn:
                continue
            delivery = _Pending(pk, delivery_id, topic)
            event = parsed[pk]
            if isinstance(event, LedgerError):
                marks.failed(delivery, str(event))
                continue
            if isinstance(event, _ParsedOrder):
                run.append((delivery, source, event))
                continue
            # Anything else may change what the run's orders and customers look like: the run
            # is written first, in delivery order, and the statuses so far.
            _map_run(session, run, plans, marks)
            run = []
            marks.write(session)
            _map_one(session, delivery, source, event, marks)
            if isinstance(event, Redact):
                # The erasure failed this step's later deliveries about the customer.
                withdrawn = _not_pending(session, [row[0] for row in rows[index + 1 :]])
        _map_run(session, run, plans, marks)
        marks.write(session)
        return len(rows)


def _not_pending(session: Session, pks: list[int]) -> set[int]:
    """Those of `pks` whose delivery is no longer pending (in this transaction)."""
    still = session.scalars(
        select(IngestDelivery.pk).where(
            IngestDelivery.pk.in_(pks), IngestDelivery.status == DeliveryStatus.PENDING.value
        )
    )
    return set(pks) - set(still)


@dataclass(frozen=True, slots=True)
class _Pending:
    """A delivery being mapped."""

    pk: int
    id: str
    topic: str


_DELIVERIES = cast(Table, IngestDelivery.__table__)
_MARK_MAPPED = (
    update(_DELIVERIES)
    .where(_DELIVERIES.c.pk == bindparam("_pk"))
    .values(
        status=DeliveryStatus.MAPPED.value,
        body=None,
        attempts=_DELIVERIES.c.attempts + 1,
        error=bindparam("_error"),
        customer_pk=bindparam("_customer_pk"),
        record_ids=bindparam("_record_ids"),
        mapped_at=bindparam("_mapped_at"),
    )
)
# A failed delivery keeps its body, for a retry.
_MARK_FAILED = (
    update(_DELIVERIES)
    .where(_DELIVERIES.c.pk == bindparam("_pk"))
    .values(
        status=DeliveryStatus.FAILED.value,
        attempts=_DELIVERIES.c.attempts + 1,
        error=bindparam("_error"),
    )
)


class _Marks:
    """The step's deliveries mapped or failed, written a few at a time (one UPDATE each kind)."""

    def __init__(self) -> None:
        self._mapped: list[dict[str, object]] = []
        self._failed: list[dict[str, object]] = []

    def mapped(self, delivery: _Pending, applied: Applied) -> None:
        self._mapped.append(
            {
                "_pk": delivery.pk,
                "_error": applied.note,
                "_customer_pk": applied.customer_pk,
                "_record_ids": applied.record_ids,
                "_mapped_at": utcnow(),
            }
        )

    def failed(self, delivery: _Pending, error: str) -> None:
        self._failed.append({"_pk": delivery.pk, "_error": error})

    def write(self, session: Session) -> None:
        connection = session.connection()
        if self._mapped:
            connection.execute(_MARK_MAPPED, self._mapped)
        if self._failed:
            connection.execute(_MARK_FAILED, self._failed)
        self._mapped, self._failed = [], []


@dataclass(frozen=True, slots=True)
class _ParsedOrder:
    state: OrderState
    state_hash: bytes


_Parsed = dict[int, Event | _ParsedOrder | LedgerError]
#: Runs of order deliveries planned before the write transaction, by their deliveries' pks.
_Plans = dict[tuple[int, ...], OrderBatch]


def _plan_pending(session_factory: sessionmaker[Session], *, limit: int) -> tuple[_Parsed, _Plans]:
    """The next pending deliveries parsed (orders with their state hash), by pk, and each run
    of consecutive orders among them planned (`OrderBatch.load` and `add`).

    Done in a read-only transaction before the write transaction, so the write lock is held
    for the writes only. A body never changes once stored, it is only deleted (mapped,
    erased, past retention), and the write transaction maps only deliveries still pending,
    writing a plan only if its rows are unchanged (`OrderBatch.still_current`).
    """
    with reading(session_factory) as session:
        rows = session.execute(
            select(IngestDelivery.pk, IngestDelivery.topic, IngestDelivery.body, IngestSource)
            .join(IngestSource, IngestSource.pk == IngestDelivery.source_pk)
            .where(IngestDelivery.status == DeliveryStatus.PENDING.value)
            .order_by(IngestDelivery.pk)
            .limit(limit)
        ).all()
        parsed: _Parsed = {}
        runs: list[list[tuple[int, str, IngestSource, _ParsedOrder]]] = [[]]
        for pk, topic, body, source in rows:
            try:
                if body is None:
                    raise LedgerError("the delivery's body was erased before it was mapped")
                event = parse_delivery(Platform(source.platform), topic, body)
            except LedgerError as exc:
                parsed[pk] = exc
                continue
            if isinstance(event, OrderState):
                parsed[pk] = order = _ParsedOrder(event, order_state_hash(event))
                runs[-1].append((pk, topic, source, order))
            else:
                parsed[pk] = event
                runs.append([])
        plans = {tuple(pk for pk, *_ in run): _plan(session, run) for run in runs if run}
    return parsed, {pks: plan for pks, plan in plans.items() if plan is not None}


def _plan(
    session: Session, run: list[tuple[int, str, IngestSource, _ParsedOrder]]
) -> OrderBatch | None:
    """A run planned, or None if planning it failed (the write transaction tries again and
    maps each delivery alone if that fails too)."""
    try:
        batch = OrderBatch(session)
        batch.load([(source, order.state) for _, _, source, order in run], lock=False)
        for _, topic, source, order in run:
            batch.add(source, topic, order.state, state_hash=order.state_hash)
    except OperationalError:
        raise
    except Exception:
        log.debug("a run of %d order deliveries could not be planned", len(run), exc_info=True)
        return None
    return batch


_OrderDelivery = tuple[_Pending, IngestSource, _ParsedOrder]


def _map_run(session: Session, run: list[_OrderDelivery], plans: _Plans, marks: _Marks) -> None:
    """Map consecutive order deliveries together (`ingest.batch`): with the plan made before
    the write transaction if its rows are unchanged, else planned again here; if that fails,
    each alone."""
    if not run:
        return
    planned = plans.get(tuple(delivery.pk for delivery, _, _ in run))
    try:
        with session.begin_nested():
            if planned is not None and planned.still_current(session):
                batch = planned
            else:
                batch = OrderBatch(session)
                batch.load([(source, order.state) for _, source, order in run], lock=True)
                for delivery, source, order in run:
                    batch.add(source, delivery.topic, order.state, state_hash=order.state_hash)
            outcomes = batch.write(session)
    except OperationalError:
        raise
    except Exception:
        log.warning(
            "%d order deliveries could not be mapped together; mapping each alone", len(run)
        )
        for delivery, source, order in run:
            _map_one(session, delivery, source, order.state, marks)
        return
    for (delivery, _, _), applied in zip(run, outcomes, strict=True):
        marks.mapped(delivery, applied)


def _map_one(
    session: Session, delivery: _Pending, source: IngestSource, event: Event, marks: _Marks
) -> None:
    try:
        with session.begin_nested():
            applied = apply_event(session=session, source=source, topic=delivery.topic, event=event)
            session.flush()
    except OperationalError:
        raise
    except LedgerError as exc:
        marks.failed(delivery, str(exc))
    except Exception as exc:
        log.exception("delivery %s could not be mapped", delivery.id)
        marks.failed(
            delivery,
            f"unexpected error while mapping ({type(exc).__name__}); retry it after an upgrade",
        )
    else:
        marks.mapped(delivery, applied)


class IngestWorker:
    """The `ingest` background role (see the module docstring)."""

    name = "ingest"

    def __init__(self, *, settings: Settings, session_factory: sessionmaker[Session]) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self._next_purge = 0.0

    async def step(self) -> int:
        """Map a batch of deliveries and settle ready clawbacks; returns how many."""
        try:
            handled = await asyncio.to_thread(self.run_once)
        except OperationalError as exc:
            raise Unavailable(
                f"the database cannot be reached ({type(exc.orig).__name__}); stored "
                "deliveries wait and are mapped once it is back"
            ) from exc
        if 0 < handled < self.settings.ingest_batch_size:
            # Deliveries are arriving (each one wakes this worker): let the next ones gather
            # for a moment, so a stream is mapped a batch at a time, not one step per delivery.
            await asyncio.sleep(LINGER_SECONDS)
        return handled

    def run_once(self) -> int:
        """`step`, blocking (for the CLI and tests)."""
        handled = 0
        deliveries, clawbacks = self._work_waiting()
        if deliveries:
            handled += map_pending(self.session_factory, limit=self.settings.ingest_batch_size)
        if clawbacks:
            with self.session_factory() as session, session.begin():
                handled += run_clawbacks(session)
        if time.monotonic() >= self._next_purge:
            with self.session_factory() as session, session.begin():
                purge_failed_bodies(
                    session, retention_days=self.settings.ingest_failed_retention_days
                )
            self._next_purge = time.monotonic() + PURGE_INTERVAL_SECONDS
        return handled

    def _work_waiting(self) -> tuple[bool, bool]:
        """Whether deliveries or clawbacks wait, read without the write lock (an idle step
        must not queue behind the API's writes on SQLite)."""
        with reading(self.session_factory) as session:
            deliveries = session.scalar(
                select(exists().where(IngestDelivery.status == DeliveryStatus.PENDING.value))
            )
            clawbacks = session.scalar(
                select(exists().where(IngestOrder.clawback_pending.is_(True)))
            )
        return bool(deliveries), bool(clawbacks)
