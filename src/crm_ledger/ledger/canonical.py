"""Canonical record content and its commitment.

Exports: `canonical_json`, `commitment`, `new_customer_key`.

Content is serialised with RFC 8785 (JSON Canonicalization Scheme) so the same document always
gives the same bytes, whoever serialises it. The commitment is HMAC-SHA256 keyed with the
customer's 32-byte key: low-entropy content cannot be confirmed by guessing without the key, and
deleting the key is the erasure.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

import rfc8785

from crm_ledger.errors import FormatError

CUSTOMER_KEY_SIZE = 32


def canonical_json(content: Any) -> bytes:
    """RFC 8785 bytes of a JSON-compatible value (floats are refused: money is decimal strings)."""
    _refuse_floats(content, "content")
    try:
        return rfc8785.dumps(content)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise FormatError(f"content cannot be canonicalised: {exc}") from exc


def _refuse_floats(value: Any, where: str) -> None:
    # rfc8785 serialises floats, but a binary float is no way to commit to an amount.
    if isinstance(value, float):
        raise FormatError(
            f"content cannot be canonicalised: {where} is a float ({value!r}); "
            'write amounts as decimal strings, e.g. "4.50"'
        )
    if isinstance(value, dict):
        for key, item in value.items():
            _refuse_floats(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _refuse_floats(item, f"{where}[{index}]")


def commitment(customer_key: bytes, canonical_content: bytes) -> bytes:
    """HMAC-SHA256(customer key, canonical content)."""
    if len(customer_key) != CUSTOMER_KEY_SIZE:
        raise FormatError(f"a customer key is {CUSTOMER_KEY_SIZE} bytes, got {len(customer_key)}")
    return hmac.new(customer_key, canonical_content, hashlib.sha256).digest()


def new_customer_key() -> bytes:
    """Fresh random customer key."""
    return secrets.token_bytes(CUSTOMER_KEY_SIZE)
