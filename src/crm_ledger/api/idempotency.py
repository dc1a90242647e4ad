"""Idempotent writes: the `Idempotency-Key` header, accepted on every POST.

Exports: `Idempotency`, `IdempotencyDep`, `run_write`, `request_hash`, `REPLAY_HEADER`.

Keys are scoped to the API key that sent them. The first request with a key stores its status
and exact response bytes in the same transaction as the records it wrote, so a crash leaves
both or neither. A later request with the same key gets those bytes back (header
`Idempotent-Replayed: true`) when it is the same request (method, path and RFC 8785 body), or a
409 when it is not. Two concurrent first requests race on the unique (api key, key)
constraint: the loser rolls back everything it wrote and replays the winner's answer. Requests
that fail store nothing, so a corrected retry may reuse the key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, cast

from fastapi import Depends, Header, Request
from pydantic import AfterValidator, BaseModel
from pydantic_core import PydanticCustomError
from sqlalchemy import Row, Table, bindparam, insert, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session
from starlette.responses import Response

from crm_ledger.api.group_commit import committer_for
from crm_ledger.api.transaction import read_only
from crm_ledger.db.models import IdempotencyEntry, utcnow
from crm_ledger.errors import Conflict, IdempotencyConflict
from crm_ledger.journal.keys import ApiKeyPrincipal
from crm_ledger.ledger.canonical import canonical_json

REPLAY_HEADER = "Idempotent-Replayed"
JSON_MEDIA_TYPE = "application/json"
# PostgreSQL deadlock and serialization failure: the transaction may simply run again.
_RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})
_ATTEMPTS = 3
_PRINTABLE = re.compile(r"[\x20-\x7e]{1,255}")
_ENTRIES = cast(Table, IdempotencyEntry.__table__)
_INSERT_ENTRY = insert(_ENTRIES)
_FIND_ENTRY = select(
    _ENTRIES.c.request_hash, _ENTRIES.c.status_code, _ENTRIES.c.response_body
).where(_ENTRIES.c.api_key_pk == bindparam("api_key_pk"), _ENTRIES.c.key == bindparam("key"))


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


async def get_idempotency(
    request: Request,
    key: Annotated[
        str | None,
        AfterValidator(_check_key),
        Header(
            alias="Idempotency-Key",
            description="Any 1 to 255 printable ASCII characters; a retry with the same key "
            "and body never writes twice and gets the first answer back.",
        ),
    ] = None,
) -> Idempotency:
    """The idempotency context of a POST."""
    return Idempotency(key=key, method=request.method, path=request.url.path)


IdempotencyDep = Annotated[Idempotency, Depends(get_idempotency)]


def request_hash(idempotency: Idempotency, payload: BaseModel) -> bytes:
    """SHA-256 of method, path and the RFC 8785 form of the validated body."""
    head = f"{idempotency.method} {idempotency.path}\n".encode()
    return hashlib.sha256(head + canonical_json(payload.model_dump(mode="json"))).digest()


def run_write(
    *,
    session: Session,
    principal: ApiKeyPrincipal,
    idempotency: Idempotency,
    payload: BaseModel,
    status_code: int,
    write: Callable[[Session], str],
    on_commit: Callable[[], None] | None = None,
) -> Response:
    """Run `write` (which returns the JSON response body) idempotently, and commit it.

    The write shares a transaction with concurrent ones (`api.group_commit`), in a savepoint
    of its own; the answer goes out only after the commit.

    `on_commit` runs only when this request's write committed (not on a replay).
    """
    key = idempotency.key
    fingerprint = request_hash(idempotency, payload) if key is not None else b""

    def job(tx: Session) -> str | Response:
        if key is not None:
            entry = _find(tx, principal, key)
            if entry is not None:
                return _replay(entry, fingerprint, key)
        body = write(tx)
        if key is not None:
            tx.connection().execute(
                _INSERT_ENTRY,
                {
                    "api_key_pk": principal.pk,
                    "key": key,
                    "request_hash": fingerprint,
                    "status_code": status_code,
                    "response_body": body,
                    "created_at": utcnow(),
                },
            )
        return body

    committer = committer_for(session)
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            outcome = committer.run(job)
        except IdempotencyConflict:
            raise
        except (IntegrityError, Conflict):
            # A concurrent request with the same key may have won the race; if so, its answer
            # is ours. Otherwise the conflict is real.
            if key is None:
                raise
            with read_only(session):
                entry = _find(session, principal, key)
            if entry is None:
                raise
            return _replay(entry, fingerprint, key)
        except OperationalError as exc:
            if attempt == _ATTEMPTS or _sqlstate(exc) not in _RETRYABLE_SQLSTATES:
                raise
            continue
        if isinstance(outcome, Response):
            return outcome
        if on_commit is not None:
            on_commit()
        return Response(
            content=outcome.encode(), status_code=status_code, media_type=JSON_MEDIA_TYPE
        )
    raise AssertionError("unreachable: the last attempt returns or raises")


def _find(session: Session, principal: ApiKeyPrincipal, key: str) -> Row[Any] | None:
    return (
        session.connection().execute(_FIND_ENTRY, {"api_key_pk": principal.pk, "key": key}).first()
    )


def _replay(entry: Row[Any], fingerprint: bytes, key: str) -> Response:
    if not hmac.compare_digest(bytes(entry.request_hash), fingerprint):
        raise IdempotencyConflict(
            f"Idempotency-Key {key!r} was already used for a different request (another "
            "method, path or body); use a new key for a new request",
            idempotency_key=key,
        )
    return Response(
        content=entry.response_body.encode(),
        status_code=entry.status_code,
        media_type=JSON_MEDIA_TYPE,
        headers={REPLAY_HEADER: "true"},
    )


def _sqlstate(exc: OperationalError) -> str | None:
    state = getattr(exc.orig, "sqlstate", None)
    return state if isinstance(state, str) else None
