"""Signing secrets: made, shown once, stored encrypted.

Exports: `new_signing_secret`, `encryption_key`, `seal`, `unseal`.

A secret is `whsec_` + base64 of 32 random bytes, the form Standard Webhooks libraries take.
At rest it is AES-256-GCM encrypted under one service key, with the subscription id as
associated data (a sealed secret copied onto another subscription does not open). The key
comes from `encryption_key` only: `CRM_LEDGER_WEBHOOK_SECRET_KEY`, or a key file made on
first use in the data directory (mode 0600).
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets as random
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from crm_ledger.config import Settings
from crm_ledger.errors import ConfigError

__all__ = ["encryption_key", "new_signing_secret", "seal", "unseal"]

_NONCE_BYTES = 12
_KEY_FILE = "webhook-secrets.key"


def new_signing_secret() -> str:
    """A fresh Standard Webhooks signing secret (`whsec_...`)."""
    return "whsec_" + base64.b64encode(random.token_bytes(32)).decode("ascii")


def encryption_key(settings: Settings) -> bytes:
    """The 32-byte key that encrypts signing secrets at rest."""
    if settings.webhook_secret_key is not None:
        try:
            key = base64.b64decode(settings.webhook_secret_key.get_secret_value(), validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if len(key) != 32:
            raise ConfigError(
                "CRM_LEDGER_WEBHOOK_SECRET_KEY must be the base64 of 32 bytes "
                "(e.g. `openssl rand -base64 32`)"
            )
        return key
    path = Path(settings.data_dir) / _KEY_FILE
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_bytes()
        if len(key) != 32:
            raise ConfigError(f"{path} must hold exactly 32 bytes") from None
        return key
    key = random.token_bytes(32)
    with os.fdopen(descriptor, "wb") as file:
        file.write(key)
    return key


def seal(secret: str, *, key: bytes, subscription_id: str) -> bytes:
    """`secret` encrypted for storage on subscription `subscription_id`."""
    nonce = random.token_bytes(_NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, secret.encode(), subscription_id.encode())


def unseal(sealed: bytes, *, key: bytes, subscription_id: str) -> str:
    """The secret `seal` stored; raises `ConfigError` when the key is not the one it used."""
    try:
        plain = AESGCM(key).decrypt(
            sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], subscription_id.encode()
        )
    except InvalidTag:
        raise ConfigError(
            "a webhook signing secret does not decrypt: the secret encryption key changed "
            "since it was stored (rotate the subscription's secret, or restore the key)"
        ) from None
    return plain.decode()
