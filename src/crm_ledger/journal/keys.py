"""API keys: issued with one role, stored only as SHA-256, revoked, looked up.

Exports: `Role`, `KEY_PREFIX`, `ApiKeyPrincipal`, `ApiKeyInfo`, `hash_api_key`,
`create_api_key`, `revoke_api_key`, `lookup`, `lookup_hash`, `list_api_keys`.

A key is `crml_` followed by 32 random bytes in URL-safe base64. Its plaintext is shown once, when
it is created; the database keeps only SHA-256 of it, which is enough because the key itself is
high-entropy (no slow password hash is needed, and the hot path stays cheap). Functions that write
only flush: the caller owns the transaction.
"""

from __future__ import annotations

import enum
import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from crm_ledger.db.models import ApiKey, utcnow
from crm_ledger.errors import NotFound

KEY_PREFIX = "crml_"
# "crml_" + 43 base64 characters; anything much longer is not one of ours.
MAX_KEY_LENGTH = 100


class Role(enum.StrEnum):
    """What a key may do: record (writes), audit (reads, proofs), marketing, admin (all)."""

    RECORDER = "recorder"
    AUDITOR = "auditor"
    MARKETING = "marketing"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class ApiKeyPrincipal:
    """The caller behind a valid, unrevoked key."""

    pk: int
    id: str
    role: Role


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    """A key as listed to operators: everything but a secret."""

    id: str
    role: str
    label: str | None
    created_at: datetime
    revoked_at: datetime | None


def hash_api_key(plaintext: str) -> bytes:
    """SHA-256 of the key's UTF-8 bytes: what the database stores and looks up."""
    return hashlib.sha256(plaintext.encode()).digest()


def create_api_key(session: Session, *, role: Role | str, label: str | None = None) -> str:
    """Store a new key for `role` and return its plaintext (the only time it is available).

    Raises `ValueError` for a role that does not exist.
    """
    try:
        checked_role = Role(role)
    except ValueError:
        allowed = ", ".join(r.value for r in Role)
        raise ValueError(f"unknown role {role!r}; roles are {allowed}") from None
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(key_hash=hash_api_key(plaintext), role=checked_role.value, label=label))
    session.flush()
    return plaintext


def revoke_api_key(session: Session, *, key_id: str) -> ApiKeyInfo:
    """Revoke the key with public id `key_id` (revoking twice keeps the first time).

    Raises `NotFound` when there is no such key. Processes that cached the key keep accepting it
    for at most their cache lifetime (a few seconds).
    """
    key = session.scalars(select(ApiKey).where(ApiKey.id == key_id)).first()
    if key is None:
        raise NotFound(f"no API key with id {key_id!r}")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.flush()
    return _info(key)


def lookup_hash(session: Session, key_hash: bytes) -> ApiKeyPrincipal | None:
    """The principal of an unrevoked key with this SHA-256, or None."""
    row = session.execute(
        select(ApiKey.pk, ApiKey.id, ApiKey.role).where(
            ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None)
        )
    ).first()
    if row is None:
        return None
    return ApiKeyPrincipal(pk=row.pk, id=row.id, role=Role(row.role))


def lookup(session: Session, plaintext: str) -> ApiKeyPrincipal | None:
    """The principal of an unrevoked key, or None; malformed keys never reach the database."""
    if not plaintext.startswith(KEY_PREFIX) or len(plaintext) > MAX_KEY_LENGTH:
        return None
    return lookup_hash(session, hash_api_key(plaintext))


def list_api_keys(session: Session) -> list[ApiKeyInfo]:
    """Every key, oldest first, without secrets."""
    return [_info(key) for key in session.scalars(select(ApiKey).order_by(ApiKey.pk))]


def _info(key: ApiKey) -> ApiKeyInfo:
    return ApiKeyInfo(
        id=key.id,
        role=key.role,
        label=key.label,
        created_at=key.created_at,
        revoked_at=key.revoked_at,
    )
