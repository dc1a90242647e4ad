"""Opaque page cursors: URL-safe base64, without padding, of a short ASCII text the API wrote.

Exports: `pack`, `unpack`, `pack_position`, `unpack_position`, `pack_document`,
`unpack_document`.

A cursor is only ever read back if it is exactly what `pack` would write for its text, so a
client cannot hand in an edited or re-padded one. Each list keeps its own text inside (a row
key, a feed position, a JSON document of sort keys) and its own error message; the `unpack*`
functions answer None for anything that is not a cursor of their kind.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any


def pack(text: str) -> str:
    """The cursor of an ASCII `text`."""
    return base64.urlsafe_b64encode(text.encode("ascii")).rstrip(b"=").decode("ascii")


def unpack(cursor: str, *, max_length: int) -> str | None:
    """The text inside `cursor` (at most `max_length` characters), or None."""
    if not (0 < len(cursor) <= max_length and cursor.isascii()):
        return None
    padded = cursor + "=" * (-len(cursor) % 4)
    try:
        text = base64.b64decode(padded, altchars=b"-_", validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return text if pack(text) == cursor else None


def pack_position(position: int, prefix: str = "") -> str:
    """The cursor of a non-negative integer (a row key, a feed position), after `prefix`."""
    return pack(prefix + str(position))


def unpack_position(cursor: str, *, prefix: str = "", maximum: int, max_length: int) -> int | None:
    """The integer inside a `pack_position(n, prefix)` cursor, 0 <= n <= `maximum`, or None."""
    text = unpack(cursor, max_length=max_length)
    if text is None or not text.startswith(prefix):
        return None
    digits = text.removeprefix(prefix)
    if not (digits.isascii() and digits.isdecimal()) or int(digits) > maximum:
        return None
    position = int(digits)
    return position if pack_position(position, prefix) == cursor else None


def pack_document(document: dict[str, Any]) -> str:
    """The cursor of a small JSON object (compact, keys sorted)."""
    return pack(json.dumps(document, separators=(",", ":"), sort_keys=True))


def unpack_document(cursor: str, *, max_length: int) -> dict[str, Any] | None:
    """The JSON object inside a `pack_document` cursor, or None."""
    text = unpack(cursor, max_length=max_length)
    if text is None:
        return None
    try:
        document = json.loads(text)
    except ValueError:
        return None
    if not isinstance(document, dict) or pack_document(document) != cursor:
        return None
    return document
