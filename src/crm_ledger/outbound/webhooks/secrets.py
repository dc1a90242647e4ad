"""Signing secrets: made here, shown once, sealed at rest under the master key ring.

Exports: `new_signing_secret`, `seal`, `unseal`.

A secret is `whsec_` + base64 of 32 random bytes, the form Standard Webhooks libraries take.
At rest it is sealed like every secret the service keeps (`journal.privacy.seal_secret`: the
master key ring, rotated by `crm-ledger keys rotate-master`), bound to the subscription id (a
sealed secret copied onto another subscription does not open).
"""

from __future__ import annotations

import base64
import secrets as random

from crm_ledger.journal.privacy import KeyRing, SecretPurpose, open_secret, seal_secret

__all__ = ["new_signing_secret", "seal", "unseal"]

_PURPOSE = SecretPurpose.WEBHOOK_SIGNING


def new_signing_secret() -> str:
    """A fresh Standard Webhooks signing secret (`whsec_...`)."""
    return "whsec_" + base64.b64encode(random.token_bytes(32)).decode("ascii")


def seal(secret: str, *, keyring: KeyRing, subscription_id: str) -> bytes:
    """`secret` sealed for storage on subscription `subscription_id`."""
    return seal_secret(keyring, purpose=_PURPOSE, bound_to=subscription_id, secret=secret)


def unseal(sealed: bytes, *, keyring: KeyRing, subscription_id: str) -> str:
    """The secret `seal` stored; raises `KeyUnavailable` when no configured master key opens it."""
    return open_secret(keyring, purpose=_PURPOSE, bound_to=subscription_id, sealed=sealed)
