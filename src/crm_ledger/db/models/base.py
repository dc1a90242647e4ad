"""The declarative base, column types and defaults every table uses.

Exports: `Base`, `PK`, `UTCDateTime`, `utcnow`, `new_id`.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    Integer,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

# SQLite only auto-increments INTEGER PRIMARY KEY, PostgreSQL wants BIGINT for long journals.
PK = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are refused: pass a timezone-aware one")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    """Timezone-aware now, UTC."""
    return datetime.now(UTC)


def new_id() -> str:
    """Fresh public id."""
    return str(uuid.uuid4())


def new_ids(count: int) -> list[str]:
    """`count` fresh public ids, as `new_id` makes them (random UUIDs, version 4), from one
    read of the OS's random source instead of one per id: a batch write of 1,000 records
    spent more on `uuid.uuid4()` than on inserting them."""
    raw = os.urandom(16 * count)
    ids = []
    for start in range(0, 16 * count, 16):
        octets = bytearray(raw[start : start + 16])
        octets[6] = (octets[6] & 0x0F) | 0x40  # version 4
        octets[8] = (octets[8] & 0x3F) | 0x80  # RFC 4122 variant
        h = octets.hex()
        ids.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return ids


class Base(DeclarativeBase):
    """Declarative base with naming conventions Alembic can rely on."""


Base.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
