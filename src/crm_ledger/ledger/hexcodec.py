"""0x-hex: how bytes are spelled in every JSON document the ledger and the service write
(receipts, bundles, API answers, change-feed events, reports).

Exports: `hex0x`, `hex0x_or_none`, `unhex`, `describe_json`, `shorten`.

Lower-case on the way out; upper or lower case accepted on the way in, with a clear
`FormatError` naming the field for anything else.
"""

from __future__ import annotations

import re

from crm_ledger.errors import FormatError

_HEX = re.compile(r"0x[0-9a-fA-F]*")


def hex0x(value: bytes | bytearray | memoryview) -> str:
    """Lower-case 0x-prefixed hex of `value`."""
    return "0x" + bytes(value).hex()


def hex0x_or_none(value: bytes | bytearray | memoryview | None) -> str | None:
    """`hex0x(value)`, or None for None (a nullable column)."""
    return None if value is None else "0x" + bytes(value).hex()


def unhex(field: str, value: object, size: int | None) -> bytes:
    """Decode 0x-hex `value`, exactly `size` bytes unless size is None; `field` names it in errors.

    For example `unhex("receipt.batch.root", "0x" + "ab" * 31, 32)` raises `FormatError`
    "receipt.batch.root must be 32 bytes of 0x-hex, got 31".
    """
    if type(value) is str and value[:2] == "0x":
        # The well-formed case first (it is on every line of a bundle). fromhex skips spaces,
        # so the length check keeps "0x0a 0b" out.
        try:
            data = bytes.fromhex(value[2:])
        except ValueError:
            pass
        else:
            if 2 * len(data) == len(value) - 2 and (size is None or len(data) == size):
                return data
    expected = f"{size} bytes of 0x-hex" if size is not None else "0x-hex bytes"
    if not isinstance(value, str):
        raise FormatError(f"{field} must be {expected}, got {describe_json(value)}")
    if not _HEX.fullmatch(value):
        raise FormatError(f"{field} must be {expected}, got {shorten(value)!r}")
    digits = len(value) - 2
    if digits % 2:
        raise FormatError(f"{field} must be {expected}, got an odd number of hex digits ({digits})")
    data = bytes.fromhex(value[2:])
    if size is not None and len(data) != size:
        raise FormatError(f"{field} must be {expected}, got {len(data)}")
    return data


def describe_json(value: object) -> str:
    """How a JSON value of the wrong type is named in an error."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return f"a string ({shorten(value)!r})"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def shorten(text: str, limit: int = 80) -> str:
    """`text`, cut to `limit` characters with an ellipsis."""
    return text if len(text) <= limit else text[:limit] + "…"
