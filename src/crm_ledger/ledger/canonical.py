"""Canonical record content and its commitment.

Exports: `canonical_json`, `commitment`, `new_customer_key`.

Content is serialised with RFC 8785 (JSON Canonicalization Scheme) so the same document always
gives the same bytes, whoever serialises it. The commitment is HMAC-SHA256 keyed with the
customer's 32-byte key: low-entropy content cannot be confirmed by guessing without the key, and
deleting the key is the erasure.
"""

from __future__ import annotations

import hmac
import json
import secrets
from typing import Any

import rfc8785

from crm_ledger.errors import FormatError

CUSTOMER_KEY_SIZE = 32


def canonical_json(content: Any) -> bytes:
    """RFC 8785 bytes of a JSON-compatible value (floats are refused: money is decimal strings).

    Most content (string keys below U+D800, integers within ±(2**53 - 1), no floats) has the
    same RFC 8785 form as the standard library's compact, key-sorted JSON: there object keys
    sort by code point, which equals RFC 8785's UTF-16 code unit order for such keys, and
    strings are escaped exactly as RFC 8785 escapes them. That form is built by the C encoder;
    anything else goes through the `rfc8785` package (tests compare the two on generated
    documents).
    """
    if _plain(content, "content"):
        try:
            return _ENCODER.encode(content).encode("utf-8")
        except UnicodeEncodeError:
            pass  # a lone surrogate: rfc8785 refuses it with its own message
    try:
        return rfc8785.dumps(content)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise FormatError(f"content cannot be canonicalised: {exc}") from exc


_ENCODER = json.JSONEncoder(
    ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False, check_circular=False
)
_INT_MAX = 2**53 - 1
#: Keys made only of code points below this sort the same by code point and by UTF-16 unit.
_FIRST_SURROGATE = "\ud800"


def _plain(value: Any, where: str) -> bool:
    """True when `value` is in the subset the fast encoder serialises as RFC 8785 does;
    raises `FormatError` at the first float (rfc8785 serialises floats, but a binary float is no
    way to commit to an amount)."""
    if isinstance(value, str) or value is None or value is True or value is False:
        return True
    if isinstance(value, dict):
        plain = True
        for key, item in value.items():
            if not isinstance(key, str) or not (key.isascii() or max(key) < _FIRST_SURROGATE):
                plain = False
            if not _plain(item, f"{where}.{key}"):
                plain = False
        return plain
    if isinstance(value, list | tuple):
        plain = True
        for index, item in enumerate(value):
            if not _plain(item, f"{where}[{index}]"):
                plain = False
        return plain
    if isinstance(value, float):
        raise FormatError(
            f"content cannot be canonicalised: {where} is a float ({value!r}); "
            'write amounts as decimal strings, e.g. "4.50"'
        )
    return type(value) is int and -_INT_MAX <= value <= _INT_MAX


def commitment(customer_key: bytes, canonical_content: bytes) -> bytes:
    """HMAC-SHA256(customer key, canonical content)."""
    if len(customer_key) != CUSTOMER_KEY_SIZE:
        raise FormatError(f"a customer key is {CUSTOMER_KEY_SIZE} bytes, got {len(customer_key)}")
    # The one-shot C function: a third cheaper than hmac.new(...).digest(), once per record.
    return hmac.digest(customer_key, canonical_content, "sha256")


def new_customer_key() -> bytes:
    """Fresh random customer key."""
    return secrets.token_bytes(CUSTOMER_KEY_SIZE)
