"""Idempotent writes: the `Idempotency-Key` header, accepted on every POST.

Exports: `Idempotency`, `IdempotencyKeyHeader`, `Written`, `run_write`,
`run_write_async`, `request_hash`, `prune_expired`, `configure_retention`, `NoBody`,
`json_response`, `REPLAY_HEADER`, `JSON_MEDIA_TYPE`.

Keys are scoped to the API key that sent them. The first request with a key stores its status
and exact response bytes in the same transaction as the records it wrote, so a crash leaves
both or neither. A later request with the same key gets those bytes back (header
`Idempotent-Replayed: true`) when it is the same request (method, path and RFC 8785 body), or a
409 when it is not. Two concurrent first requests race on the unique (api key, key)
constraint: the loser rolls back everything it wrote and replays the winner's answer. Requests
that fail store nothing, so a corrected retry may reuse the key.

Stored answers may hold personal data, so they are sealed (`journal.privacy.seal_response`)
and linked to the customers they concern (`Written.customer_ids`). Erasing one of those
customers deletes the answer but keeps the entry: a replay then answers 410 Gone instead of
writing again. Entries older than `idempotency_retention_hours` (24 h by default, as Stripe
keeps keys) are deleted by `prune_expired`, which the write path runs at most once every
`idempotency_prune_interval_seconds` per process; after that a key may be used afresh.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any, cast

from fastapi import Header
from pydantic import AfterValidator, BaseModel, ConfigDict
from pydantic_core import PydanticCustomError
from sqlalchemy import Engine, Row, Table, bindparam, delete, insert, select
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from crm_ledger.api.group_commit import committer_of
from crm_ledger.api.transaction import read_only
from crm_ledger.db.models import Customer, IdempotencyEntry, IdempotencySubject, utcnow
from crm_ledger.errors import Conflict, Gone, IdempotencyConflict
from crm_ledger.journal.keys import ApiKeyPrincipal
from crm_ledger.journal.privacy import keyring_of, open_response, seal_response
from crm_ledger.ledger.canonical import canonical_json

log = logging.getLogger(__name__)

REPLAY_HEADER = "Idempotent-Replayed"
JSON_MEDIA_TYPE = "application/json"


class NoBody(BaseModel):
    """The empty body of a POST that changes a state (pause, retry, rotate): what its
    Idempotency-Key fingerprints."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def json_response(
    body: BaseModel | str | bytes,
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """The JSON answer of a handler: a model, or a body already serialised (sent as it is)."""
    content = body.model_dump_json() if isinstance(body, BaseModel) else body
    return Response(
        content=content, status_code=status_code, media_type=JSON_MEDIA_TYPE, headers=headers
    )


# PostgreSQL deadlock and serialization failure: the transaction may simply run again.
_RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})
_ATTEMPTS = 3
_PRINTABLE = re.compile(r"[\x20-\x7e]{1,255}")
_ENTRIES = cast(Table, IdempotencyEntry.__table__)
# RETURNING each stored answer's pk with its (API key, key), unique, for its customer links:
# asking for parameter order instead made SQLAlchemy insert row by row on SQLite.
_INSERT_ENTRIES = insert(_ENTRIES).returning(_ENTRIES.c.pk, _ENTRIES.c.api_key_pk, _ENTRIES.c.key)
_SUBJECTS = cast(Table, IdempotencySubject.__table__)
_CUSTOMERS = cast(Table, Customer.__table__)
# One row per (stored answer, customer); built once: building it on every write cost more
# than running it (SQLAlchemy constructs it and derives its cache key each time).
_LINK_SUBJECT = insert(_SUBJECTS).from_select(
    ["idempotency_pk", "customer_pk"],
    select(bindparam("entry_pk", type_=_SUBJECTS.c.idempotency_pk.type), _CUSTOMERS.c.pk).where(
        _CUSTOMERS.c.id == bindparam("customer_id")
    ),
)
_FIND_ENTRIES = select(
    _ENTRIES.c.api_key_pk,
    _ENTRIES.c.key,
    _ENTRIES.c.request_hash,
    _ENTRIES.c.status_code,
    _ENTRIES.c.response_sealed,
).where(
    _ENTRIES.c.api_key_pk.in_(bindparam("api_key_pks", expanding=True)),
    _ENTRIES.c.key.in_(bindparam("keys", expanding=True)),
)
_FIND_ENTRY = select(
    _ENTRIES.c.request_hash,
    _ENTRIES.c.status_code,
    _ENTRIES.c.response_sealed,
).where(_ENTRIES.c.api_key_pk == bindparam("api_key_pk"), _ENTRIES.c.key == bindparam("key"))


@dataclass(frozen=True, slots=True)
class Written:
    """A write's JSON answer and the public ids of the customers it concerns."""

    body: str
    customer_ids: Sequence[str] = field(default_factory=tuple)


def _check_key(value: str | None) -> str | None:
    if value is not None and not _PRINTABLE.fullmatch(value):
        raise PydanticCustomError(
            "idempotency_key",
            "must be 1 to 255 printable ASCII characters (a UUID is a good choice)",
        )
    return value


@dataclass(frozen=True, slots=True)
class Idempotency:
    """The request's Idempotency-Key (None when absent) and what identifies the request."""

    key: str | None
    method: str
    path: str


#: The `Idempotency-Key` header as a handler or dependency parameter (checked, documented).
IdempotencyKeyHeader = Annotated[
    str | None,
    AfterValidator(_check_key),
    Header(
        alias="Idempotency-Key",
        description="Any 1 to 255 printable ASCII characters; a retry with the same key "
        "and body never writes twice and gets the first answer back.",
    ),
]


def request_hash(idempotency: Idempotency, payload: BaseModel) -> bytes:
    """SHA-256 of method, path and the RFC 8785 form of the validated body."""
    head = f"{idempotency.method} {idempotency.path}\n".encode()
    return hashlib.sha256(head + canonical_json(payload.model_dump(mode="json"))).digest()


def run_write(
    *,
    sessions: sessionmaker[Session],
    principal: ApiKeyPrincipal,
    idempotency: Idempotency,
    payload: BaseModel,
    status_code: int,
    write: Callable[[Session], str | Written],
    on_commit: Callable[[], None] | None = None,
) -> Response:
    """Run `write` (which returns the JSON response body) idempotently, and commit it.

    The write shares a transaction with concurrent ones (`api.group_commit`; when `write` is
    `Combinable`, one bulk write with theirs); the answer goes out only after the commit.
    Blocks: call it from a worker thread (a plain `def` handler); `run_write_async` is the same
    for `async def` handlers. A session of `sessions` is opened only after a failure, to look
    for a concurrent request's stored answer.

    `write` returns the body, or a `Written` naming the customers the answer concerns (their
    erasure deletes the stored answer). `on_commit` runs only when this request's write
    committed (not on a replay).
    """
    plan = _WritePlan(sessions, principal, idempotency, payload, status_code, write)
    engine = _engine_of(sessions)
    _pruner.maybe_prune(engine)
    committer = committer_of(engine)
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            outcome = committer.run(plan)
        except Exception as exc:
            replayed = plan.after_failure(exc, attempt)
            if replayed is None:
                continue
            return replayed
        return _answer(outcome, status_code, on_commit)
    raise AssertionError("unreachable: the last attempt returns or raises")


async def run_write_async(
    *,
    sessions: sessionmaker[Session],
    principal: ApiKeyPrincipal,
    idempotency: Idempotency,
    payload: BaseModel,
    status_code: int,
    write: Callable[[Session], str | Written],
    on_commit: Callable[[], None] | None = None,
) -> Response:
    """`run_write` for `async def` handlers: the event loop hands the write to the group
    committer's thread and awaits its commit, with no worker thread of its own in between.

    The write itself (`write`) still runs in the committer's thread; only the rare paths that
    read after a failure (a concurrent request with the same key won) go to a worker thread.
    """
    plan = _WritePlan(sessions, principal, idempotency, payload, status_code, write)
    engine = _engine_of(sessions)
    await _pruner.maybe_prune_async(engine)
    committer = committer_of(engine)
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            outcome = await committer.run_async(plan)
        except Exception as exc:
            replayed = await run_in_threadpool(plan.after_failure, exc, attempt)
            if replayed is None:
                continue
            return replayed
        return _answer(outcome, status_code, on_commit)
    raise AssertionError("unreachable: the last attempt returns or raises")


class _WritePlan:
    """One idempotent write: the job the committer runs, and what a failure of it means.

    The job is `Combinable` (`api.group_commit`) when its write is: the committer may then
    run it with others in one bulk call (`_run_plans`), each still replayed, checked and
    stored as alone.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        principal: ApiKeyPrincipal,
        idempotency: Idempotency,
        payload: BaseModel,
        status_code: int,
        write: Callable[[Session], str | Written],
    ) -> None:
        self.sessions = sessions
        self.status_code = status_code
        self.principal = principal
        self.key = idempotency.key
        self.write = write
        write_bulk = getattr(write, "bulk", None)
        self.bulk = None if write_bulk is None else _plans_bulk(write_bulk)
        self.fingerprint = request_hash(idempotency, payload) if self.key is not None else b""

    def __call__(self, tx: Session) -> str | Response:
        """Replay a stored answer for the key, or write and store the answer."""
        key = self.key
        if key is not None:
            entry = _find(tx, self.principal, key)
            if entry is not None:
                return _replay(tx, entry, self.fingerprint, self.principal, key)
        written = self.write(tx)
        outcome = written if isinstance(written, Written) else Written(written)
        if key is not None:
            _store(tx, [(self, outcome)])
        return outcome.body

    def after_failure(self, exc: Exception, attempt: int) -> Response | None:
        """After the job raised `exc`: the winner's answer when a concurrent request with the
        same key won the race, None to try again (a PostgreSQL deadlock or serialization
        failure), else `exc` raised again. Reads the database: not on the event loop."""
        if isinstance(exc, IdempotencyConflict):
            raise exc
        if isinstance(exc, IntegrityError | Conflict):
            # A concurrent request with the same key may have won the race; if so, its answer
            # is ours. Otherwise the conflict is real.
            if self.key is None:
                raise exc
            with self.sessions() as session:
                with read_only(session):
                    entry = _find(session, self.principal, self.key)
                if entry is None:
                    raise exc
                return _replay(session, entry, self.fingerprint, self.principal, self.key)
        if (
            isinstance(exc, OperationalError)
            and attempt < _ATTEMPTS
            and _sqlstate(exc) in _RETRYABLE_SQLSTATES
        ):
            return None
        raise exc


def _answer(
    outcome: str | Response, status_code: int, on_commit: Callable[[], None] | None
) -> Response:
    if isinstance(outcome, Response):
        return outcome
    if on_commit is not None:
        on_commit()
    return Response(content=outcome.encode(), status_code=status_code, media_type=JSON_MEDIA_TYPE)


def _find(session: Session, principal: ApiKeyPrincipal, key: str) -> Row[Any] | None:
    return (
        session.connection().execute(_FIND_ENTRY, {"api_key_pk": principal.pk, "key": key}).first()
    )


@functools.cache
def _plans_bulk(
    write_bulk: Callable[[Session, list[Any]], Sequence[Any]],
) -> Callable[[Session, list[_WritePlan]], list[str | Response]]:
    """The bulk function of the plans whose writes combine with `write_bulk` (one object per
    write bulk function: the committer combines jobs whose `bulk` is the same)."""

    def bulk(tx: Session, plans: list[_WritePlan]) -> list[str | Response]:
        return _run_plans(tx, plans, write_bulk)

    return bulk


def _run_plans(
    tx: Session,
    plans: list[_WritePlan],
    write_bulk: Callable[[Session, list[Any]], Sequence[Any]],
) -> list[str | Response]:
    """Combined idempotent writes, each answered as alone: one lookup of every key, a replay
    (or its 409 / 410) for each key found, one bulk write of the others, their answers stored
    together. Two plans with the same new key both write here and fail on the key's unique
    constraint when stored: the committer then runs them one by one, and the second replays."""
    keyed = [plan for plan in plans if plan.key is not None]
    found: dict[tuple[int, str], Row[Any]] = {}
    if keyed:
        rows = tx.connection().execute(
            _FIND_ENTRIES,
            {
                "api_key_pks": sorted({plan.principal.pk for plan in keyed}),
                "keys": sorted({cast(str, plan.key) for plan in keyed}),
            },
        )
        found = {(row.api_key_pk, row.key): row for row in rows}
    answers: list[str | Response | None] = []
    new: list[_WritePlan] = []
    for plan in plans:
        entry = found.get((plan.principal.pk, plan.key)) if plan.key is not None else None
        if entry is None:
            answers.append(None)
            new.append(plan)
        else:
            answers.append(
                _replay(tx, entry, plan.fingerprint, plan.principal, cast(str, plan.key))
            )
    written = write_bulk(tx, [plan.write for plan in new]) if new else []
    outcomes = [w if isinstance(w, Written) else Written(w) for w in written]
    _store(tx, [(plan, o) for plan, o in zip(new, outcomes, strict=True) if plan.key is not None])
    bodies = iter(outcome.body for outcome in outcomes)
    return [answer if answer is not None else next(bodies) for answer in answers]


def _scope(principal: ApiKeyPrincipal, key: str) -> str:
    """What a sealed answer is bound to: it opens only in its own (API key, key) row."""
    return f"{principal.pk}|{key}"


def _store(tx: Session, stored: list[tuple[_WritePlan, Written]]) -> None:
    """Store each plan's answer for its key, linked to the customers it concerns: one
    statement for the answers and one for the links, however many."""
    if not stored:
        return
    keyring = keyring_of(tx)
    now = utcnow()
    connection = tx.connection()
    inserted = connection.execute(
        _INSERT_ENTRIES,
        [
            {
                "api_key_pk": plan.principal.pk,
                "key": plan.key,
                "request_hash": plan.fingerprint,
                "status_code": plan.status_code,
                "response_sealed": seal_response(
                    keyring, scope=_scope(plan.principal, cast(str, plan.key)), body=outcome.body
                ),
                "created_at": now,
            }
            for plan, outcome in stored
        ],
    )
    entry_pks = {(row.api_key_pk, row.key): row.pk for row in inserted}
    links = [
        {"entry_pk": entry_pks[plan.principal.pk, plan.key], "customer_id": customer_id}
        for plan, outcome in stored
        for customer_id in sorted({c.lower() for c in outcome.customer_ids})
    ]
    if links:
        connection.execute(_LINK_SUBJECT, links)


def _replay(
    session: Session, entry: Row[Any], fingerprint: bytes, principal: ApiKeyPrincipal, key: str
) -> Response:
    if not hmac.compare_digest(bytes(entry.request_hash), fingerprint):
        raise IdempotencyConflict(
            f"Idempotency-Key {key!r} was already used for a different request (another "
            "method, path or body); use a new key for a new request",
            idempotency_key=key,
        )
    if entry.response_sealed is None:
        raise Gone(
            f"the request with Idempotency-Key {key!r} was carried out, but the personal data "
            "of a customer it concerned has since been erased, and its answer with it; it is "
            "not carried out again",
            idempotency_key=key,
        )
    body = open_response(
        keyring_of(session), scope=_scope(principal, key), sealed=bytes(entry.response_sealed)
    )
    return Response(
        content=body.encode(),
        status_code=entry.status_code,
        media_type=JSON_MEDIA_TYPE,
        headers={REPLAY_HEADER: "true"},
    )


def _engine_of(sessions: sessionmaker[Session]) -> Engine:
    engine = sessions.kw["bind"]
    assert isinstance(engine, Engine)
    return engine


def _sqlstate(exc: OperationalError) -> str | None:
    state = getattr(exc.orig, "sqlstate", None)
    return state if isinstance(state, str) else None


def prune_expired(*, session: Session, older_than: timedelta) -> int:
    """Delete stored answers (and their subject links) older than `older_than`; the count.

    The caller owns the transaction.
    """
    cutoff = utcnow() - older_than
    expired = select(IdempotencyEntry.pk).where(IdempotencyEntry.created_at < cutoff)
    session.execute(
        delete(IdempotencySubject).where(IdempotencySubject.idempotency_pk.in_(expired))
    )
    result = session.execute(delete(IdempotencyEntry).where(IdempotencyEntry.created_at < cutoff))
    return int(getattr(result, "rowcount", 0) or 0)


class _Pruner:
    """Runs `prune_expired` from the write path at most once per interval per process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next: dict[int, float] = {}

    def maybe_prune(self, engine: Engine) -> None:
        """Prune now if the interval has passed (blocks until the prune committed)."""
        prune = self._due(engine)
        if prune is not None:
            try:
                committer_of(engine).run(prune)
            except SQLAlchemyError:
                # Housekeeping must not fail the write it rides on; the next interval retries.
                log.warning("pruning expired idempotency entries failed", exc_info=True)

    async def maybe_prune_async(self, engine: Engine) -> None:
        """`maybe_prune` awaiting the committer instead of blocking."""
        prune = self._due(engine)
        if prune is not None:
            try:
                await committer_of(engine).run_async(prune)
            except SQLAlchemyError:
                log.warning("pruning expired idempotency entries failed", exc_info=True)

    def _due(self, engine: Engine) -> Callable[[Session], int] | None:
        """The prune job when one is due for `engine`'s database (and the next one timed)."""
        settings = _retention_of(engine)
        if settings is None:
            return None
        retention, interval = settings
        now = time.monotonic()
        with self._lock:
            if now < self._next.get(id(engine), 0.0):
                return None
            self._next[id(engine)] = now + interval
        return lambda tx: prune_expired(session=tx, older_than=timedelta(hours=retention))


def configure_retention(engine: object, *, retention_hours: float, interval_seconds: float) -> None:
    """Turn on pruning of expired idempotent answers for writes on `engine` (`create_app`)."""
    setattr(engine, _RETENTION_ATTRIBUTE, (retention_hours, interval_seconds))


def _retention_of(engine: object) -> tuple[float, float] | None:
    value = getattr(engine, _RETENTION_ATTRIBUTE, None)
    return value if isinstance(value, tuple) else None


_RETENTION_ATTRIBUTE = "_crm_ledger_idempotency_retention"
_pruner = _Pruner()
