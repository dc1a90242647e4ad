"""What the view's modules share: the current deployment epochs, the opaque cursor codec and the
422 for bad query parameters.

Exports: `Epochs`, `current_epochs`, `encode_cursor`, `decode_cursor`, `bad_parameter`,
`aware`, `timestamp_or_none`, `LEDGER`, `TOKEN`.

Cursors are opaque (URL-safe base64 of a small JSON document) and tied to what they page: the
decoder refuses anything that does not re-encode to the very same text.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from crm_ledger import cursors
from crm_ledger.db.models import Deployment, IndexerStream
from crm_ledger.errors import Unprocessable
from crm_ledger.journal.schemas import format_timestamp

__all__ = [
    "LEDGER",
    "TOKEN",
    "Epochs",
    "aware",
    "bad_parameter",
    "current_epochs",
    "decode_cursor",
    "encode_cursor",
    "timestamp_or_none",
]

LEDGER = "AuditLedger"
TOKEN = "LoyaltyToken"
_MAX_CURSOR_LENGTH = 512


@dataclass(frozen=True, slots=True)
class Epochs:
    """The latest deployment epoch of each contract, and the last block the token indexer read."""

    ledger: int | None
    token: int | None
    token_indexed_through: int | None


def current_epochs(session: Session) -> Epochs:
    """The epochs whose indexed events count now (older epochs are history)."""
    latest = dict(
        session.execute(
            select(Deployment.contract, func.max(Deployment.epoch))
            .where(Deployment.contract.in_([LEDGER, TOKEN]))
            .group_by(Deployment.contract)
        )
        .tuples()
        .all()
    )
    token = latest.get(TOKEN)
    through = None
    if token is not None:
        next_block = session.scalar(
            select(IndexerStream.next_block).where(
                IndexerStream.contract == TOKEN, IndexerStream.epoch == token
            )
        )
        through = int(next_block) - 1 if next_block is not None else None
    return Epochs(ledger=latest.get(LEDGER), token=token, token_indexed_through=through)


def encode_cursor(document: dict[str, Any]) -> str:
    """The opaque cursor for `document` (canonical JSON, URL-safe base64 without padding)."""
    return cursors.pack_document(document)


def decode_cursor(cursor: str, field: str) -> dict[str, Any]:
    """The document of a cursor `encode_cursor` made; raises `Unprocessable` naming `field`."""
    document = cursors.unpack_document(cursor, max_length=_MAX_CURSOR_LENGTH)
    if document is None:
        raise bad_parameter(
            field,
            "is not a cursor this API issued: pass the next_cursor of the previous page "
            "unchanged, or leave it out to start from the first page",
        )
    return document


def bad_parameter(field: str, message: str) -> Unprocessable:
    """The error for a bad query parameter: a 422 that names it."""
    return Unprocessable(
        f"{field} {message}",
        errors=[{"location": "query", "field": field, "message": message}],
    )


def aware(value: Any) -> datetime | None:
    """A datetime from a scalar subquery (SQLite answers a string, naive, in UTC)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def timestamp_or_none(value: datetime | None) -> str | None:
    """The API's timestamp text for `value`, or None."""
    return format_timestamp(value) if value is not None else None
