"""Personal data at rest: per-customer data keys wrapped by a master key, and a blind index.

Exports: `PersonalFields`, `MasterKey`, `KeyRing`, `load_keyring`, `key_file`, `read_key_file`,
`write_key_file`, `attach_keyring`, `keyring_of`, `keyring_for_engine`, `new_data_key`,
`wrap_data_key`, `unwrap_data_key`, `wrapped_under`, `seal_personal`, `open_personal`,
`seal_response`, `open_response`, `SecretPurpose`, `seal_secret`, `open_secret`,
`normalise_email`, `MASTER_KEY_FILE`, `NEXT_SUFFIX`.

Every customer has a random 256-bit data key. Their personal fields (name, email, phone) are one
AES-256-GCM ciphertext under that key; the data key itself is stored wrapped (AES-256-GCM) by the
master key. Both ciphertexts are bound to the customer's public id (the AEAD's associated data),
so a ciphertext moved to another row does not open. Erasure deletes the wrapped data key.

Email lookups use a blind index: HMAC-SHA256 of the normalised email under an index key derived
from the master key with HKDF-SHA256, so equal emails match without the email being stored.
Stored idempotent answers are sealed under a third HKDF-derived key, and the secrets the service
keeps for others (a shop's webhook secret, a webhook subscription's signing secret) under a
fourth: one master key ring protects everything sealed at rest, and `crm-ledger keys
rotate-master` re-seals all of it (`journal.rotation`).

A wrapped blob starts with the 8-byte id of the master key that made it (HKDF of that key), so a
key ring holding the current master key and, during a rotation, the next one opens both.

The master key (32 bytes, base64) comes from `CRM_LEDGER_MASTER_KEY` or the file
`CRM_LEDGER_MASTER_KEY_FILE`; with neither, one is generated into `<data dir>/master.key`
(mode 0600) on first start. A `<file>.next` beside the key file is a rotation in progress
(`crm-ledger keys rotate-master`): it is loaded too, and becomes the current key.

The key ring of a database is attached to its engine (`attach_keyring`), so every session on it,
the group committer's included, finds it with `keyring_of(session)`.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hmac
import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from crm_ledger.config import Settings
from crm_ledger.errors import ConfigError, KeyUnavailable

log = logging.getLogger(__name__)

MASTER_KEY_FILE = "master.key"
NEXT_SUFFIX = ".next"
_KEY_ID_SIZE = 8
_NONCE_SIZE = 12
_ENGINE_ATTRIBUTE = "_crm_ledger_keyring"
_WRAP_AAD = b"crm-ledger data key v1|"
_PERSONAL_AAD = b"crm-ledger personal v1|"
_RESPONSE_AAD = b"crm-ledger idempotent answer v1|"
_SECRET_AAD = b"crm-ledger stored secret v1|"


class SecretPurpose(enum.StrEnum):
    """What a stored secret is for; part of what its ciphertext is bound to."""

    #: The HMAC secret a shop (Shopify, WooCommerce, Magento) signs its webhooks with.
    SHOP_SOURCE = "shop source"
    #: The Standard Webhooks signing secret of a webhook subscription.
    WEBHOOK_SIGNING = "webhook signing"


@dataclass(frozen=True, slots=True)
class PersonalFields:
    """A customer's personal fields in the clear (all None once erased)."""

    name: str | None = None
    email: str | None = None
    phone: str | None = None


class MasterKey:
    """One master key and the keys derived from it (id, blind index, stored answers)."""

    __slots__ = ("_index_key", "_responses", "_secrets", "_wrap", "key_id")

    def __init__(self, secret: bytes) -> None:
        if len(secret) != 32:
            raise ConfigError(f"a master key is 32 bytes, this one is {len(secret)}")
        self.key_id = _derive(secret, b"crm-ledger master key id v1", _KEY_ID_SIZE)
        self._wrap = AESGCM(secret)
        self._index_key = _derive(secret, b"crm-ledger email blind index v1", 32)
        self._responses = AESGCM(_derive(secret, b"crm-ledger idempotent answers v1", 32))
        self._secrets = AESGCM(_derive(secret, b"crm-ledger stored secrets v1", 32))

    def email_index(self, email: str) -> bytes:
        """HMAC-SHA256 of the normalised email under this key's index key."""
        return hmac.digest(self._index_key, normalise_email(email).encode(), "sha256")

    def __repr__(self) -> str:
        return f"MasterKey(key_id={self.key_id.hex()})"


class KeyRing:
    """The master key new data is sealed under, and any others that still open old data."""

    def __init__(self, current: MasterKey, *others: MasterKey) -> None:
        self.current = current
        self._keys = {key.key_id: key for key in (*others, current)}

    @classmethod
    def generate(cls) -> KeyRing:
        """A key ring with a fresh random master key (tests, first start)."""
        return cls(MasterKey(secrets.token_bytes(32)))

    def by_id(self, key_id: bytes) -> MasterKey:
        """The master key with this id; raises `KeyUnavailable`."""
        key = self._keys.get(key_id)
        if key is None:
            raise KeyUnavailable(
                f"data sealed under master key {key_id.hex()} cannot be opened: that key is not "
                "configured (CRM_LEDGER_MASTER_KEY / CRM_LEDGER_MASTER_KEY_FILE); the keys "
                f"known are {', '.join(k.hex() for k in self._keys)}"
            )
        return key

    def email_indexes(self, email: str) -> list[bytes]:
        """The email's blind index under every known master key (old rows during a rotation)."""
        return [key.email_index(email) for key in self._keys.values()]


def new_data_key() -> bytes:
    """A fresh random 256-bit data key."""
    return AESGCM.generate_key(bit_length=256)


def wrap_data_key(keyring: KeyRing, *, customer_id: str, data_key: bytes) -> bytes:
    """`data_key` sealed under the current master key, bound to `customer_id`."""
    master = keyring.current
    nonce = secrets.token_bytes(_NONCE_SIZE)
    sealed = master._wrap.encrypt(nonce, data_key, _WRAP_AAD + customer_id.encode())
    return master.key_id + nonce + sealed


def unwrap_data_key(keyring: KeyRing, *, customer_id: str, wrapped: bytes) -> bytes:
    """The data key inside `wrapped`; raises `KeyUnavailable` when no known key opens it."""
    master = keyring.by_id(bytes(wrapped[:_KEY_ID_SIZE]))
    nonce = bytes(wrapped[_KEY_ID_SIZE : _KEY_ID_SIZE + _NONCE_SIZE])
    try:
        return master._wrap.decrypt(
            nonce, bytes(wrapped[_KEY_ID_SIZE + _NONCE_SIZE :]), _WRAP_AAD + customer_id.encode()
        )
    except InvalidTag:
        raise KeyUnavailable(
            f"the wrapped data key of customer {customer_id} does not open: it was altered or "
            "moved from another row"
        ) from None


def wrapped_under(wrapped: bytes) -> bytes:
    """The id of the master key a wrapped data key was sealed under."""
    return bytes(wrapped[:_KEY_ID_SIZE])


def seal_personal(data_key: bytes, *, customer_id: str, fields: PersonalFields) -> bytes:
    """The personal fields as one AES-256-GCM ciphertext (nonce first)."""
    plain = json.dumps(
        {"name": fields.name, "email": fields.email, "phone": fields.phone},
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()
    nonce = secrets.token_bytes(_NONCE_SIZE)
    return nonce + AESGCM(data_key).encrypt(nonce, plain, _PERSONAL_AAD + customer_id.encode())


def open_personal(data_key: bytes, *, customer_id: str, sealed: bytes) -> PersonalFields:
    """The fields inside `seal_personal`'s ciphertext; raises `KeyUnavailable` if altered."""
    try:
        plain = AESGCM(data_key).decrypt(
            bytes(sealed[:_NONCE_SIZE]),
            bytes(sealed[_NONCE_SIZE:]),
            _PERSONAL_AAD + customer_id.encode(),
        )
    except InvalidTag:
        raise KeyUnavailable(
            f"the personal fields of customer {customer_id} do not open: altered or moved"
        ) from None
    document = json.loads(plain)
    return PersonalFields(name=document["name"], email=document["email"], phone=document["phone"])


def seal_response(keyring: KeyRing, *, scope: str, body: str) -> bytes:
    """A stored idempotent answer sealed under the current key's answer key, bound to `scope`."""
    master = keyring.current
    return master.key_id + _seal(master._responses, body.encode(), _RESPONSE_AAD + scope.encode())


def open_response(keyring: KeyRing, *, scope: str, sealed: bytes) -> str:
    """The answer inside `seal_response`'s output; raises `KeyUnavailable`."""
    master = keyring.by_id(bytes(sealed[:_KEY_ID_SIZE]))
    plain = _open(master._responses, sealed, _RESPONSE_AAD + scope.encode())
    if plain is None:
        raise KeyUnavailable("a stored idempotent answer does not open: altered or moved")
    return plain.decode()


def seal_secret(keyring: KeyRing, *, purpose: SecretPurpose, bound_to: str, secret: str) -> bytes:
    """`secret` sealed for storage under the current master key, bound to its purpose and to
    `bound_to` (the id of the row that holds it): copied onto another row it does not open."""
    master = keyring.current
    aad = _SECRET_AAD + purpose.value.encode() + b"|" + bound_to.encode()
    return master.key_id + _seal(master._secrets, secret.encode(), aad)


def open_secret(keyring: KeyRing, *, purpose: SecretPurpose, bound_to: str, sealed: bytes) -> str:
    """The secret inside `seal_secret`'s output; raises `KeyUnavailable` when no configured
    master key made it or it was altered or moved to another row."""
    master = keyring.by_id(bytes(sealed[:_KEY_ID_SIZE]))
    aad = _SECRET_AAD + purpose.value.encode() + b"|" + bound_to.encode()
    plain = _open(master._secrets, sealed, aad)
    if plain is None:
        raise KeyUnavailable(
            f"a stored {purpose.value} secret of {bound_to} does not open: altered or moved"
        )
    return plain.decode()


def _seal(aead: AESGCM, plain: bytes, aad: bytes) -> bytes:
    nonce = secrets.token_bytes(_NONCE_SIZE)
    return nonce + aead.encrypt(nonce, plain, aad)


def _open(aead: AESGCM, sealed: bytes, aad: bytes) -> bytes | None:
    """Open `key id ‖ nonce ‖ ciphertext`; None when it does not authenticate."""
    body = bytes(sealed[_KEY_ID_SIZE:])
    try:
        return aead.decrypt(body[:_NONCE_SIZE], body[_NONCE_SIZE:], aad)
    except InvalidTag:
        return None


def normalise_email(email: str) -> str:
    """The form emails are matched in: surrounding space removed, lower case."""
    return email.strip().lower()


# Where the key ring lives -------------------------------------------------------------------


def attach_keyring(engine: Engine, keyring: KeyRing) -> None:
    """Make `keyring` the one every session on `engine` uses."""
    setattr(engine, _ENGINE_ATTRIBUTE, keyring)


def keyring_for_engine(engine: Engine) -> KeyRing | None:
    """The key ring attached to `engine`, or None."""
    keyring = getattr(engine, _ENGINE_ATTRIBUTE, None)
    return keyring if isinstance(keyring, KeyRing) else None


def keyring_of(session: Session) -> KeyRing:
    """The key ring of the session's database; raises `ConfigError` when none is attached."""
    bind = session.get_bind()
    engine = bind if isinstance(bind, Engine) else bind.engine
    keyring = keyring_for_engine(engine)
    if keyring is None:
        raise ConfigError(
            "no master key is loaded for this database: personal data cannot be sealed or "
            "opened (the service loads it from CRM_LEDGER_MASTER_KEY or the key file)"
        )
    return keyring


# Loading ------------------------------------------------------------------------------------


def load_keyring(settings: Settings) -> KeyRing:
    """The key ring the settings name; generates `<data dir>/master.key` when none is set.

    Raises `ConfigError` for a key that is not 32 bytes of base64 or a file that cannot be read.
    """
    if settings.master_key is not None:
        current = MasterKey(
            _decode(settings.master_key.get_secret_value(), "CRM_LEDGER_MASTER_KEY")
        )
        return KeyRing(current)
    path = key_file(settings)
    if settings.master_key_file is None and not path.exists():
        write_key_file(path, secrets.token_bytes(32))
        log.warning(
            "generated a new master key for personal data in %s (mode 0600); back it up: "
            "without it no personal field can be read",
            path,
        )
    current = MasterKey(read_key_file(path))
    pending = path.with_name(path.name + NEXT_SUFFIX)
    if pending.exists():
        # A rotation was interrupted: rows may be under either key until it is run again.
        return KeyRing(MasterKey(read_key_file(pending)), current)
    return KeyRing(current)


def key_file(settings: Settings) -> Path:
    """The master key file the settings use (configured, or the data directory's)."""
    if settings.master_key_file is not None:
        return settings.master_key_file
    return settings.data_dir / MASTER_KEY_FILE


def read_key_file(path: Path) -> bytes:
    """The 32-byte key in a key file (base64 text); raises `ConfigError`."""
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the master key file {path}: {exc}") from None
    return _decode(text, f"the master key file {path}")


def write_key_file(path: Path, secret: bytes) -> None:
    """Write a key file with mode 0600 (created so, never world-readable for an instant)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as handle:
        handle.write(base64.b64encode(secret).decode("ascii") + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _decode(text: str, where: str) -> bytes:
    try:
        secret = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        secret = b""
    if len(secret) != 32:
        raise ConfigError(
            f"{where} must hold 32 random bytes in base64 (e.g. `openssl rand -base64 32`)"
        )
    return secret


def _derive(secret: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(secret)


__all__ = [
    "MASTER_KEY_FILE",
    "NEXT_SUFFIX",
    "KeyRing",
    "MasterKey",
    "PersonalFields",
    "attach_keyring",
    "key_file",
    "keyring_for_engine",
    "keyring_of",
    "load_keyring",
    "new_data_key",
    "normalise_email",
    "open_personal",
    "open_response",
    "read_key_file",
    "seal_personal",
    "seal_response",
    "unwrap_data_key",
    "wrap_data_key",
    "wrapped_under",
    "write_key_file",
]
