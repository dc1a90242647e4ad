"""Source secrets at rest: AES-256-GCM under one key from the settings.

Exports: `secret_key`, `encrypt_secret`, `decrypt_secret`, `KEY_FILE_NAME`.

`secret_key(settings)` is the one place that decides the key: `CRM_LEDGER_INGEST_SECRET_KEY`
(base64 of 32 bytes) when set, else a key file made once in the data directory (mode 0600), so a
development install works with no setting. Each ciphertext is bound to its source id (the
associated data), so a ciphertext copied onto another source does not decrypt.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from functools import lru_cache
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from crm_ledger.config import Settings
from crm_ledger.errors import ConfigError

KEY_FILE_NAME = "ingest-secret.key"
_NONCE_BYTES = 12
_KEY_BYTES = 32


def secret_key(settings: Settings) -> bytes:
    """The 32-byte key source secrets are encrypted with."""
    if settings.ingest_secret_key is not None:
        return _decode_key(
            settings.ingest_secret_key.get_secret_value(), "CRM_LEDGER_INGEST_SECRET_KEY"
        )
    return _key_file((settings.data_dir / KEY_FILE_NAME).resolve())


def encrypt_secret(key: bytes, secret: str, *, source_id: str) -> bytes:
    """Nonce ‖ AES-GCM ciphertext of `secret`, bound to `source_id`."""
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, secret.encode(), source_id.encode())


def decrypt_secret(key: bytes, blob: bytes, *, source_id: str) -> str:
    """The secret inside `blob`; raises `ConfigError` when `key` is not the one it was made
    with."""
    try:
        plain = AESGCM(key).decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], source_id.encode())
    except InvalidTag:
        raise ConfigError(
            "a source secret does not decrypt with the configured ingest secret key: "
            "CRM_LEDGER_INGEST_SECRET_KEY (or the key file) changed since it was stored"
        ) from None
    return plain.decode()


def _decode_key(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except binascii.Error:
        key = b""
    if len(key) != _KEY_BYTES:
        raise ConfigError(f"{where} must be the base64 of 32 random bytes")
    return key


@lru_cache(maxsize=8)
def _key_file(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _decode_key(path.read_text(), str(path))
    with os.fdopen(descriptor, "w") as file:
        file.write(base64.b64encode(secrets.token_bytes(_KEY_BYTES)).decode() + "\n")
    return _decode_key(path.read_text(), str(path))
