"""The ingest worker: maps stored deliveries to records, settles clawbacks, purges old bodies.

Exports: `IngestWorker`, `map_pending`.

Each step reads and parses up to `ingest_batch_size` pending deliveries (hashing the order
states) in a read-only transaction, then maps them in delivery order in one write transaction:
the records a delivery writes and its status (`mapped`, body deleted) commit together, so a
process killed mid-step maps the delivery again after restart, and only once. Consecutive order
deliveries are mapped together by `ingest.batch` (a few statements for the whole run, in a
savepoint); any other delivery, and every delivery of a run that could not be written together,
is mapped alone in a savepoint of its own. A delivery that cannot be mapped is `failed` with
its error; the others go on. The database being down is `Unavailable`: the supervisor backs off
and the deliveries stay pending. The webhook endpoint wakes the worker after each delivery it
stores.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from sqlalchemy import exists, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, defer, sessionmaker

from crm_ledger.config import Settings
from crm_ledger.db.models import IngestDelivery, IngestOrder, IngestSource, utcnow
from crm_ledger.db.session import reading
from crm_ledger.errors import LedgerError, Unavailable
from crm_ledger.ingest.apply import Applied, apply_event, order_state_hash
from crm_ledger.ingest.batch import OrderBatch
from crm_ledger.ingest.clawback import run_clawbacks
from crm_ledger.ingest.inbox import DeliveryStatus, purge_failed_bodies
from crm_ledger.ingest.payloads import Event, OrderState, parse_delivery
from crm_ledger.ingest.signatures import Platform

log = logging.getLogger(__name__)

#: How often the worker deletes the bodies of failed deliveries past retention.
PURGE_INTERVAL_SECONDS = 600.0
#: How long a step that found less than a full batch waits before the next one.
LINGER_SECONDS = 0.05


def map_pending(session_factory: sessionmaker[Session], *, limit: int) -> int:
    """Map up to `limit` pending deliveries; returns how many were handled (mapped or failed)."""
    parsed = _parse_pending(session_factory, limit=limit)
    if not parsed:
        return 0
    # No autoflush: changes are flushed once per run of orders or per delivery, not before
    # every query the mapping makes.
    with session_factory(autoflush=False) as session, session.begin():
        # Only those still pending: one erased meanwhile is failed, its body gone.
        rows = session.execute(
            select(IngestDelivery, IngestSource)
            .join(IngestSource, IngestSource.pk == IngestDelivery.source_pk)
            .where(
                IngestDelivery.pk.in_(list(parsed)),
                IngestDelivery.status == DeliveryStatus.PENDING.value,
            )
            .order_by(IngestDelivery.pk)
            .options(defer(IngestDelivery.body))
            .with_for_update(of=IngestDelivery)
        ).all()
        run: list[_OrderDelivery] = []
        for delivery, source in rows:
            delivery.attempts += 1
            event = parsed[delivery.pk]
            if isinstance(event, LedgerError):
                _failed(delivery, str(event))
                continue
            if isinstance(event, _ParsedOrder):
                run.append((delivery, source, event))
                continue
            # Anything else may change what the run's orders and customers look like: the run
            # is written first, in delivery order.
            _map_run(session, run)
            run = []
            _map_one(session, delivery, source, event)
        _map_run(session, run)
        return len(rows)


@dataclass(frozen=True, slots=True)
class _ParsedOrder:
    state: OrderState
    state_hash: bytes


def _parse_pending(
    session_factory: sessionmaker[Session], *, limit: int
) -> dict[int, Event | _ParsedOrder | LedgerError]:
    """The next pending deliveries, parsed (orders with their state hash), by pk.

    Read and parsed before the write transaction, so the write lock is held for the writes
    only. A body never changes once stored, it is only deleted (mapped, erased, past
    retention), and the write transaction maps only deliveries still pending.
    """
    with reading(session_factory) as session:
        rows = session.execute(
            select(
                IngestDelivery.pk, IngestDelivery.topic, IngestDelivery.body, IngestSource.platform
            )
            .join(IngestSource, IngestSource.pk == IngestDelivery.source_pk)
            .where(IngestDelivery.status == DeliveryStatus.PENDING.value)
            .order_by(IngestDelivery.pk)
            .limit(limit)
        ).all()
    parsed: dict[int, Event | _ParsedOrder | LedgerError] = {}
    for pk, topic, body, platform in rows:
        try:
            if body is None:
                raise LedgerError("the delivery's body was erased before it was mapped")
            event = parse_delivery(Platform(platform), topic, body)
        except LedgerError as exc:
            parsed[pk] = exc
            continue
        parsed[pk] = (
            _ParsedOrder(event, order_state_hash(event)) if isinstance(event, OrderState) else event
        )
    return parsed


_OrderDelivery = tuple[IngestDelivery, IngestSource, _ParsedOrder]


def _map_run(session: Session, run: list[_OrderDelivery]) -> None:
    """Map consecutive order deliveries together (`ingest.batch`); if that fails, each alone."""
    if not run:
        return
    try:
        with session.begin_nested():
            batch = OrderBatch(session)
            batch.load([(source, order.state) for _, source, order in run])
            for delivery, source, order in run:
                batch.add(source, delivery.topic, order.state, state_hash=order.state_hash)
            outcomes = batch.write()
    except OperationalError:
        raise
    except Exception:
        log.warning(
            "%d order deliveries could not be mapped together; mapping each alone", len(run)
        )
        for delivery, source, order in run:
            _map_one(session, delivery, source, order.state)
        return
    for (delivery, _, _), applied in zip(run, outcomes, strict=True):
        _mapped(delivery, applied)


def _map_one(
    session: Session, delivery: IngestDelivery, source: IngestSource, event: Event
) -> None:
    try:
        with session.begin_nested():
            applied = apply_event(session=session, source=source, topic=delivery.topic, event=event)
            session.flush()
    except OperationalError:
        raise
    except LedgerError as exc:
        _failed(delivery, str(exc))
    except Exception as exc:
        log.exception("delivery %s could not be mapped", delivery.id)
        _failed(
            delivery,
            f"unexpected error while mapping ({type(exc).__name__}); retry it after an upgrade",
        )
    else:
        _mapped(delivery, applied)


def _failed(delivery: IngestDelivery, error: str) -> None:
    delivery.status = DeliveryStatus.FAILED.value
    delivery.error = error


def _mapped(delivery: IngestDelivery, applied: Applied) -> None:
    delivery.status = DeliveryStatus.MAPPED.value
    delivery.body = None
    delivery.error = applied.note
    delivery.customer_pk = applied.customer_pk
    delivery.record_ids = applied.record_ids
    delivery.mapped_at = utcnow()


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
