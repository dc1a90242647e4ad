"""API keys: issued with one role, stored only as SHA-256, revoked, rotated, looked up.

Exports: `Role`, `KEY_PREFIX`, `ApiKeyPrincipal`, `ApiKeyInfo`, `hash_api_key`,
`create_api_key`, `revoke_api_key`, `rotate_api_key`, `lookup`, `lookup_hash`, `list_api_keys`,
`mark_keys_changed`, `KeysChangedMark`, `KEYS_CHANGED_FILE`.

A key may carry an expiry (`expires_at`): from its creation (`--expires-in`), or set by a
rotation, which issues a new key with the same role and lets the old one work for an overlap so
clients can switch without a gap. `lookup_hash` returns expired keys too, with their expiry, so
the API can say "expired" rather than "unknown"; whoever authenticates checks `expired()`.

A key is `crml_` followed by 32 random bytes in URL-safe base64. Its plaintext is shown once, when
it is created; the database keeps only SHA-256 of it, which is enough because the key itself is
high-entropy (no slow password hash is needed, and the hot path stays cheap). Functions that write
only flush: the caller owns the transaction.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import mmap
import os
import secrets
import struct
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from crm_ledger.db.models import ApiKey, utcnow
from crm_ledger.errors import Conflict, NotFound

log = logging.getLogger(__name__)

KEY_PREFIX = "crml_"
#: In the data directory: its stamp moves after a revocation or rotation, so that API processes
#: on this host forget the keys they cached (`api.deps.ApiKeyCache`, `KeysChangedMark`).
KEYS_CHANGED_FILE = "api-keys.changed"
# The stamp: nanoseconds since the epoch, at least one more than the one before, little-endian.
_STAMP = struct.Struct("<q")
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
    """The caller behind an unrevoked key (check `expired()` before trusting it)."""

    pk: int
    id: str
    role: Role
    expires_at: datetime | None = None

    def expired(self, now: datetime | None = None) -> bool:
        """Whether the key's expiry has passed."""
        return self.expires_at is not None and self.expires_at <= (now or utcnow())


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    """A key as listed to operators: everything but a secret."""

    id: str
    role: str
    label: str | None
    created_at: datetime
    revoked_at: datetime | None
    expires_at: datetime | None = None


def hash_api_key(plaintext: str) -> bytes:
    """SHA-256 of the key's UTF-8 bytes: what the database stores and looks up."""
    return hashlib.sha256(plaintext.encode()).digest()


def create_api_key(
    session: Session,
    *,
    role: Role | str,
    label: str | None = None,
    expires_in: timedelta | None = None,
) -> str:
    """Store a new key for `role` and return its plaintext (the only time it is available).

    With `expires_in` the key stops working that long from now. Raises `ValueError` for a role
    that does not exist or an expiry that is not in the future.
    """
    if expires_in is not None and expires_in <= timedelta(0):
        raise ValueError("a key's expiry must be in the future")
    try:
        checked_role = Role(role)
    except ValueError:
        allowed = ", ".join(r.value for r in Role)
        raise ValueError(f"unknown role {role!r}; roles are {allowed}") from None
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    expires_at = utcnow() + expires_in if expires_in is not None else None
    session.add(
        ApiKey(
            key_hash=hash_api_key(plaintext),
            role=checked_role.value,
            label=label,
            expires_at=expires_at,
        )
    )
    session.flush()
    return plaintext


def revoke_api_key(session: Session, *, key_id: str) -> ApiKeyInfo:
    """Revoke the key with public id `key_id` (revoking twice keeps the first time).

    Raises `NotFound` when there is no such key. API processes that cached the key keep
    accepting it until `mark_keys_changed` runs (after the commit) on their host, and for at
    most their cache lifetime (a few seconds) on other hosts.
    """
    key = session.scalars(select(ApiKey).where(ApiKey.id == key_id)).first()
    if key is None:
        raise NotFound(f"no API key with id {key_id!r}")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.flush()
    return _info(key)


def rotate_api_key(
    session: Session, *, key_id: str, overlap: timedelta
) -> tuple[str, ApiKeyInfo, ApiKeyInfo]:
    """Issue a new key with the role of `key_id` and make the old one expire after `overlap`.

    Returns the new key's plaintext, the new key and the old one. An old key that already
    expires sooner keeps its expiry. Raises `NotFound` for no such key, `Conflict` for a key
    that is revoked or expired (create a new one instead), `ValueError` for a negative overlap.
    """
    if overlap < timedelta(0):
        raise ValueError("the overlap cannot be negative")
    old = session.scalars(select(ApiKey).where(ApiKey.id == key_id).with_for_update()).first()
    if old is None:
        raise NotFound(f"no API key with id {key_id!r}")
    now = utcnow()
    if old.revoked_at is not None or (old.expires_at is not None and old.expires_at <= now):
        state = "revoked" if old.revoked_at is not None else "expired"
        raise Conflict(
            f"API key {key_id} is {state}; there is nothing to rotate: create a new key with "
            "`crm-ledger keys create`"
        )
    label = f"rotated from {old.id}" + (f": {old.label}" if old.label else "")
    plaintext = create_api_key(session, role=old.role, label=label[:200])
    if old.expires_at is None or old.expires_at > now + overlap:
        old.expires_at = now + overlap
    session.flush()
    new = session.scalars(select(ApiKey).where(ApiKey.key_hash == hash_api_key(plaintext))).one()
    return plaintext, _info(new), _info(old)


def lookup_hash(session: Session, key_hash: bytes) -> ApiKeyPrincipal | None:
    """The principal of an unrevoked key with this SHA-256 (expired or not), or None."""
    row = session.execute(
        select(ApiKey.pk, ApiKey.id, ApiKey.role, ApiKey.expires_at).where(
            ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None)
        )
    ).first()
    if row is None:
        return None
    return ApiKeyPrincipal(pk=row.pk, id=row.id, role=Role(row.role), expires_at=row.expires_at)


def lookup(session: Session, plaintext: str) -> ApiKeyPrincipal | None:
    """The principal of an unrevoked key (expired or not), or None; malformed keys never reach
    the database."""
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
        expires_at=key.expires_at,
    )


def mark_keys_changed(data_dir: Path) -> None:
    """Tell API processes using `data_dir` to forget cached keys (call after committing): move
    the stamp at the start of `KEYS_CHANGED_FILE`, which they read from memory."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / KEYS_CHANGED_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        before = os.pread(fd, _STAMP.size, 0)
        previous = _STAMP.unpack(before)[0] if len(before) == _STAMP.size else 0
        # Two changes within one clock tick must still move the stamp.
        os.pwrite(fd, _STAMP.pack(max(time.time_ns(), previous + 1)), 0)
    finally:
        os.close(fd)


class KeysChangedMark:
    """The stamp `mark_keys_changed` moves, read through a shared memory map of the file.

    An API process checks it on every authenticated request: a `stat` of the file there cost
    up to a sixth of the single-write rate, for the system call lets the busy group-commit
    thread take the interpreter from the event loop (docs/benchmarks.md). A write to the file by
    another process shows in the map at once (one page cache). Where the file cannot be
    mapped, the stamp is read with `pread`.
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / KEYS_CHANGED_FILE
        data_dir.mkdir(parents=True, exist_ok=True)
        self._map: mmap.mmap | None = None
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size < _STAMP.size:
                os.ftruncate(fd, _STAMP.size)  # zeros: no change marked yet
            self._map = mmap.mmap(fd, _STAMP.size, access=mmap.ACCESS_READ)
        except OSError as exc:
            log.warning("cannot map %s (%s): reading it on every request instead", self.path, exc)
        finally:
            os.close(fd)

    def stamp(self) -> int:
        """The latest change's stamp (0 when none was marked)."""
        if self._map is not None:
            return int(_STAMP.unpack_from(self._map, 0)[0])
        try:
            with open(self.path, "rb") as marker:
                data = marker.read(_STAMP.size)
        except OSError:
            return 0
        return int(_STAMP.unpack(data)[0]) if len(data) == _STAMP.size else 0
