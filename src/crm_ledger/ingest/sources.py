"""Sources: the shops that send webhooks, and their secrets.

Exports: `create_source`, `get_source`, `list_sources`, `delete_source`, `rotate_source`,
`source_public`, `webhook_path`, `verifying_keys`, `VerifyingKeys`, `SourceKeyCache`,
`still_current`.

Secrets come from the shop (Shopify shows its signing secret, WooCommerce and Magento take the
one you type), are sealed under the master key ring (`journal.privacy.seal_secret`, rotated with
it) before they are stored, and are never returned nor logged. A rotation keeps the previous
secret valid for `ingest_rotation_grace_seconds` (24 hours by default), so deliveries already
queued in the shop with the old signature are still accepted. Writers flush, the caller
commits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from crm_ledger.config import Settings
from crm_ledger.db.models import IngestSource, new_id, utcnow
from crm_ledger.errors import NotFound, Unprocessable
from crm_ledger.ingest.schemas import SourceCreate, SourcePublic, SourceRotate
from crm_ledger.ingest.signatures import Platform, load_public_key
from crm_ledger.journal.privacy import KeyRing, SecretPurpose, keyring_of, open_secret, seal_secret
from crm_ledger.journal.schemas import format_timestamp, is_public_id, shorten


@dataclass(frozen=True, slots=True)
class VerifyingKeys:
    """What a delivery to a source may be signed with: its secret, the previous one until its
    grace ends, its public key; `stored` is the source's row they were read from."""

    source_pk: int
    source_id: str
    platform: Platform
    # Never in a repr (a log line or a traceback): the secrets are in the clear here.
    secret: str | None = field(repr=False)
    previous_secret: str | None = field(repr=False)
    previous_expires_at: datetime | None
    public_key: str | None
    stored: tuple[object, ...] = field(repr=False)

    def secrets(self, now: datetime) -> list[str]:
        """The secrets a signature made at `now` may use (the previous one only in its grace)."""
        secrets = [self.secret] if self.secret is not None else []
        if (
            self.previous_secret is not None
            and self.previous_expires_at is not None
            and now < self.previous_expires_at
        ):
            secrets.append(self.previous_secret)
        return secrets


#: How long the webhook endpoint keeps a source's keys without reading them again. Not needed
#: for correctness (see the module docstring); it bounds how long unsealed secrets of a source
#: nobody posts to stay in memory.
KEY_CACHE_SECONDS = 60.0
_KEY_CACHE_ENTRIES = 10_000


class SourceKeyCache:
    """`VerifyingKeys` by (platform, source id), each kept `ttl` seconds (thread-safe)."""

    def __init__(self, ttl: float = KEY_CACHE_SECONDS, max_entries: int = _KEY_CACHE_ENTRIES):
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[tuple[str, str], tuple[float, VerifyingKeys]] = {}
        self._lock = threading.Lock()

    def get(self, platform: str, source_id: str) -> VerifyingKeys | None:
        """The cached keys, or None when absent or older than `ttl`."""
        entry = self._entries.get((platform, source_id))
        if entry is None or time.monotonic() >= entry[0]:
            return None
        return entry[1]

    def put(self, platform: str, source_id: str, keys: VerifyingKeys) -> None:
        """Remember `keys` for `ttl` seconds."""
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[(platform, source_id)] = (time.monotonic() + self.ttl, keys)

    def forget(self, platform: str, source_id: str) -> None:
        """Drop the source's keys (the next delivery reads them again)."""
        with self._lock:
            self._entries.pop((platform, source_id), None)


_KEY_COLUMNS = (
    IngestSource.deleted_at,
    IngestSource.secret_ciphertext,
    IngestSource.previous_secret_ciphertext,
    IngestSource.previous_secret_expires_at,
    IngestSource.public_key,
)


# Built once: a webhook's store runs it in the group committer's thread for every group.
_CURRENT_KEYS = select(IngestSource.pk, *_KEY_COLUMNS).where(
    IngestSource.pk.in_(bindparam("pks", expanding=True))
)


def still_current(session: Session, keys: Sequence[VerifyingKeys]) -> list[bool]:
    """For each of `keys`, whether the source it was read from is still active and holds the
    same keys (in the caller's write transaction, before it stores deliveries verified with
    them): one query for all."""
    pks = sorted({k.source_pk for k in keys})
    stored = {row[0]: tuple(row[1:]) for row in session.execute(_CURRENT_KEYS, {"pks": pks})}
    return [stored.get(k.source_pk) == k.stored for k in keys]


def webhook_path(platform: str, source_id: str) -> str:
    """The path a shop posts its webhooks to."""
    return f"/v1/webhooks/{platform}/{source_id}"


def create_source(*, session: Session, payload: SourceCreate) -> IngestSource:
    """Add a source.

    Raises `Unprocessable` when the source has nothing to verify signatures with (Shopify and
    WooCommerce need `secret`; Magento `public_key` and/or `secret`) or the public key is not
    an RSA PEM key.
    """
    _check_public_key(payload.public_key)
    if payload.platform is not Platform.MAGENTO and payload.public_key is not None:
        raise _bad("public_key", "only Magento sources sign with a public key")
    if payload.secret is None and payload.public_key is None:
        needed = "secret or public_key" if payload.platform is Platform.MAGENTO else "secret"
        raise _bad(
            needed.split()[0],
            f"a {payload.platform.value} source needs its {needed}: the value the shop signs "
            "its webhooks with",
        )
    secret = payload.secret
    source_id = new_id()
    keyring = keyring_of(session)
    source = IngestSource(
        id=source_id,
        platform=payload.platform.value,
        name=payload.name,
        secret_ciphertext=_seal(keyring, secret, source_id) if secret else None,
        public_key=payload.public_key,
        created_at=utcnow(),
    )
    session.add(source)
    session.flush()
    return source


def get_source(*, session: Session, source_id: str, active: bool = False) -> IngestSource:
    """The source `source_id` (only if not deleted when `active`); raises `NotFound`."""
    source = None
    if is_public_id(source_id):
        source = session.scalars(
            select(IngestSource).where(IngestSource.id == source_id.lower())
        ).first()
    if source is None or (active and source.deleted_at is not None):
        shown = shorten(source_id)
        raise NotFound(f"no webhook source with id {shown!r}", source_id=shown)
    return source


def list_sources(*, session: Session) -> list[IngestSource]:
    """Every source, deleted ones included, oldest first."""
    return list(session.scalars(select(IngestSource).order_by(IngestSource.pk)))


def delete_source(*, session: Session, source_id: str) -> IngestSource:
    """Stop accepting deliveries for the source (what it already delivered stays)."""
    source = get_source(session=session, source_id=source_id)
    if source.deleted_at is None:
        source.deleted_at = utcnow()
        source.secret_ciphertext = None
        source.previous_secret_ciphertext = None
        source.previous_secret_expires_at = None
    session.flush()
    return source


def rotate_source(
    *, session: Session, settings: Settings, source_id: str, payload: SourceRotate
) -> IngestSource:
    """Replace the source's secret (and/or public key); the old secret stays valid for the
    grace period. Raises `Unprocessable` when neither is given."""
    source = get_source(session=session, source_id=source_id, active=True)
    _check_public_key(payload.public_key)
    if source.platform != Platform.MAGENTO and payload.public_key is not None:
        raise _bad("public_key", "only Magento sources sign with a public key")
    if payload.secret is None and payload.public_key is None:
        raise _bad("secret", "send the new secret (or, for Magento, the new public_key)")
    now = utcnow()
    secret = payload.secret
    if secret is not None:
        source.previous_secret_ciphertext = source.secret_ciphertext
        source.previous_secret_expires_at = (
            now + timedelta(seconds=settings.ingest_rotation_grace_seconds)
            if source.secret_ciphertext is not None
            else None
        )
        source.secret_ciphertext = _seal(keyring_of(session), secret, source.id)
    if payload.public_key is not None:
        source.public_key = payload.public_key
    source.rotated_at = now
    session.flush()
    return source


def verifying_keys(*, session: Session, platform: str, source_id: str) -> VerifyingKeys:
    """The secrets and key a delivery to `platform`/`source_id` may be signed with.

    Raises `NotFound` for an unknown or deleted source, or one of another platform.
    """
    source = get_source(session=session, source_id=source_id, active=True)
    if source.platform != platform:
        raise NotFound(
            f"source {source.id} is a {source.platform} source: its webhook URL is "
            f"{webhook_path(source.platform, source.id)}",
            source_id=source.id,
        )
    keyring = keyring_of(session)
    previous = source.previous_secret_ciphertext
    return VerifyingKeys(
        source_pk=source.pk,
        source_id=source.id,
        platform=Platform(source.platform),
        secret=(
            _open(keyring, source.secret_ciphertext, source.id)
            if source.secret_ciphertext is not None
            else None
        ),
        previous_secret=_open(keyring, previous, source.id) if previous is not None else None,
        previous_expires_at=source.previous_secret_expires_at,
        public_key=source.public_key,
        stored=tuple(getattr(source, column.key) for column in _KEY_COLUMNS),
    )


def source_public(source: IngestSource, *, base_url: str) -> SourcePublic:
    """The public form of a source (never its secret)."""
    expires = source.previous_secret_expires_at
    return SourcePublic(
        id=source.id,
        platform=Platform(source.platform),
        name=source.name,
        webhook_url=base_url.rstrip("/") + webhook_path(source.platform, source.id),
        has_secret=source.secret_ciphertext is not None,
        has_public_key=source.public_key is not None,
        previous_secret_valid_until=(
            format_timestamp(expires)
            if expires is not None and source.previous_secret_ciphertext is not None
            else None
        ),
        created_at=format_timestamp(source.created_at),
        rotated_at=format_timestamp(source.rotated_at) if source.rotated_at else None,
        deleted_at=format_timestamp(source.deleted_at) if source.deleted_at else None,
    )


def _check_public_key(pem: str | None) -> None:
    if pem is not None:
        try:
            load_public_key(pem)
        except ValueError as exc:
            raise _bad("public_key", str(exc)) from None


def _bad(field: str, message: str) -> Unprocessable:
    return Unprocessable(
        f"{field}: {message}", errors=[{"location": "body", "field": field, "message": message}]
    )


_PURPOSE = SecretPurpose.SHOP_SOURCE


def _seal(keyring: KeyRing, secret: str, source_id: str) -> bytes:
    return seal_secret(
        keyring, purpose=SecretPurpose.SHOP_SOURCE, bound_to=source_id, secret=secret
    )


def _open(keyring: KeyRing, sealed: bytes, source_id: str) -> str:
    return open_secret(
        keyring, purpose=SecretPurpose.SHOP_SOURCE, bound_to=source_id, sealed=sealed
    )
