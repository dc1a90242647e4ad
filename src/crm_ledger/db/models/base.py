"""The declarative base, column types and defaults every table uses.

Exports: `Base`, `PK`, `UTCDateTime`, `utcnow`, `new_id`.
"""

from __future__ import annotations

import os
import time
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
    """Fresh public id (see `new_ids`)."""
    return new_ids(1)[0]


def new_ids(count: int) -> list[str]:
    """`count` fresh public ids: UUIDs of version 7 (RFC 9562), the current UNIX time in
    milliseconds then 74 random bits, from one read of the OS's random source.

    Time-ordered, so the unique index on each table's `id` grows at its end instead of at
    random places: inserting 450 feed rows into a table of 180,000 took half the time
    (docs/benchmarks.md), and a table's index pages stay in cache as it grows. An id says when
    its row was made, to the millisecond; every row it names shows that time anyway (a record's
    `recorded_at`, a customer's `created_at`). Ids are names, not secrets: API keys and signing
    secrets come from `secrets`.
    """
    millis = (time.time_ns() // 1_000_000).to_bytes(6, "big")
    raw = os.urandom(10 * count)
    ids = []
    for start in range(0, 10 * count, 10):
        octets = bytearray(millis + raw[start : start + 10])
        octets[6] = (octets[6] & 0x0F) | 0x70  # version 7
        octets[8] = (octets[8] & 0x3F) | 0x80  # RFC 9562 variant
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
