"""What a client may ask the journal to store: validated request documents.

Exports: `CustomerCreate`, `InteractionCreate`, `InteractionBatchCreate`, `OrderCreate`,
`OrderLine`, `OrderStatus`, `format_timestamp`, `is_public_id`, `shorten`, `safe_text`,
`MAX_SAFE_INTEGER`.

Everything a record commits to passes through these models, so they refuse what the ledger
cannot commit to exactly: floats (a binary float is no way to state an amount), integers beyond
±(2**53 - 1) (RFC 8785 cannot serialise them), lone surrogates (not Unicode), and JSON nested
deeper than `MAX_DETAILS_DEPTH`. Short text fields also refuse control characters. Unknown fields
are refused, so a typo is an error, not silently dropped data.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictInt,
    StringConstraints,
)
from pydantic_core import PydanticCustomError

MAX_SAFE_INTEGER = 2**53 - 1
MAX_DETAILS_DEPTH = 32

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})", re.ASCII
)
_MONEY = re.compile(r"\d{1,18}(\.\d{1,8})?", re.ASCII)
_CURRENCY = re.compile(r"[A-Z]{3}", re.ASCII)
_EMAIL = re.compile(r"[^@\s]+@[^@\s.]+(\.[^@\s.]+)+")
_PHONE = re.compile(r"\+?[0-9][0-9 ().-]*", re.ASCII)


def format_timestamp(value: datetime) -> str:
    """RFC 3339 in UTC with microseconds and a "Z", e.g. 2026-11-25T10:00:00.000000Z."""
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def is_public_id(value: str) -> bool:
    """True when `value` has the shape of a public id (a UUID)."""
    return _UUID.fullmatch(value) is not None


#: Longest text a message quotes of the input by default.
MAX_QUOTED_CHARS = 1000
_PATH_PART_CHARS = 100
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Control, format (bidi overrides, zero-width), surrogate, private-use; line/paragraph separators.
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})


def safe_text(value: str, *, limit: int = MAX_QUOTED_CHARS) -> str:
    """`value` fit to quote in a message: invisible and unencodable characters escaped as
    Python-style `\\xNN` / `\\uNNNN`, and at most about `limit` characters (the middle cut out,
    so both the start and the explanation at the end survive)."""
    out = []
    for char in value:
        if unicodedata.category(char) in _ESCAPED_CATEGORIES:
            out.append(_SHORT_ESCAPES.get(char) or _escape(ord(char)))
        else:
            out.append(char)
    text = "".join(out)
    if len(text) <= limit:
        return text
    head = limit * 2 // 3
    return text[:head] + "…" + text[len(text) - (limit - head - 1) :]


def _escape(code: int) -> str:
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def shorten(value: str, limit: int = 64) -> str:
    """`value` made safe and cut to about `limit` characters: for echoing ids in messages."""
    return safe_text(value, limit=limit)


def _printable(value: str) -> str:
    for char in value:
        category = unicodedata.category(char)
        if category == "Cc":
            raise PydanticCustomError(
                "text_control_character",
                "must not contain control characters (found U+{code})",
                {"code": f"{ord(char):04X}"},
            )
        if category == "Cs":
            raise PydanticCustomError("text_surrogate", "must not contain lone UTF-16 surrogates")
    return value


def _public_id(value: object) -> str:
    if not isinstance(value, str) or not is_public_id(value):
        raise PydanticCustomError(
            "public_id",
            "must be an id as returned by this API (a UUID such as {example})",
            {"example": "0b6a3c1e-4f4e-4d3c-9c1e-2f0a5b7c8d9e"},
        )
    return value.lower()


def _money(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise PydanticCustomError(
            "money_number",
            'write money as a decimal string such as "10.50", not as a JSON number '
            "(a binary number cannot state every amount exactly)",
        )
    if not isinstance(value, str) or not _MONEY.fullmatch(value):
        raise PydanticCustomError(
            "money_format",
            "must be a decimal string of up to 18 digits, optionally a point and up to 8 more, "
            'such as "10.50"',
        )
    return value


def _timestamp_text(value: object) -> object:
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise PydanticCustomError(
            "rfc3339",
            "must be an RFC 3339 date-time with a time zone, such as 2026-11-25T10:00:00Z",
        )
    return value


def _to_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise PydanticCustomError("datetime_range", "is outside the years 0001 to 9999") from None


def _currency(value: str) -> str:
    if not _CURRENCY.fullmatch(value):
        raise PydanticCustomError("currency", "must be an ISO 4217 code: 3 capital letters (EUR)")
    return value


def _email(value: str) -> str:
    if not _EMAIL.fullmatch(value):
        raise PydanticCustomError("email", "must be an e-mail address such as ada@example.com")
    return value


def _phone(value: str) -> str:
    if not _PHONE.fullmatch(value) or sum(c.isdigit() for c in value) < 3:
        raise PydanticCustomError(
            "phone", "must be a phone number: digits, spaces, ( ) . - and an optional leading +"
        )
    return value


def _json_object(value: dict[str, Any]) -> dict[str, Any]:
    _check_json(value, "", 0)
    return value


def _check_json(value: object, where: str, depth: int) -> None:
    """Refuse what RFC 8785 cannot commit to exactly; `where` names the place in errors."""
    if depth > MAX_DETAILS_DEPTH:
        raise PydanticCustomError(
            "json_depth", "is nested deeper than {limit} levels", {"limit": MAX_DETAILS_DEPTH}
        )
    if isinstance(value, dict):
        for key, item in value.items():
            # The path is quoted in messages: a key may be anything, a lone surrogate included.
            shown = safe_text(key, limit=_PATH_PART_CHARS)
            _check_string(key, f"{where}.{shown}" if where else shown)
            _check_json(item, f"{where}.{shown}" if where else shown, depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_json(item, f"{where}[{index}]", depth + 1)
    elif isinstance(value, str):
        _check_string(value, where)
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise PydanticCustomError(
                "json_integer_range",
                "{where}: {value} is beyond ±{limit}, the largest integer canonical JSON "
                "(RFC 8785) keeps exact; send it as a string",
                {"where": where or "value", "value": value, "limit": MAX_SAFE_INTEGER},
            )
    elif isinstance(value, float):
        raise PydanticCustomError(
            "json_float",
            "{where}: {value} has a fraction or an exponent; the ledger commits only to exact "
            'values, so send it as a string such as "{value}"',
            {"where": where or "value", "value": repr(value)},
        )
    else:
        raise PydanticCustomError("json_type", "{where}: is not a JSON value", {"where": where})


def _check_string(value: str, where: str) -> None:
    if any(unicodedata.category(char) == "Cs" for char in value):
        raise PydanticCustomError(
            "text_surrogate", "{where}: contains a lone UTF-16 surrogate", {"where": where}
        )


PublicId = Annotated[str, BeforeValidator(_public_id)]
Money = Annotated[str, BeforeValidator(_money)]
Timestamp = Annotated[
    AwareDatetime,
    BeforeValidator(_timestamp_text),
    AfterValidator(_to_utc),
    PlainSerializer(format_timestamp, return_type=str),
]
JsonObject = Annotated[dict[str, Any], AfterValidator(_json_object)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(_printable)]
Label = Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(_printable)]
Email = Annotated[
    str,
    StringConstraints(min_length=3, max_length=320),
    AfterValidator(_printable),
    AfterValidator(_email),
]
Phone = Annotated[str, StringConstraints(min_length=3, max_length=40), AfterValidator(_phone)]
Currency = Annotated[str, AfterValidator(_currency)]


#: The id shown in the OpenAPI examples.
EXAMPLE_ID = "0192f1c4-6a4e-7c3a-9b1e-2f6d1a0b9c8d"


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CustomerCreate(_Request):
    """A new customer; `external_ref` (your system's id for them) is unique when given."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"name": "Ada Lovelace", "email": "ada@example.com", "tags": ["vip"]}]
        }
    )

    name: Name
    email: Email
    phone: Phone | None = None
    external_ref: Name | None = None
    tags: Annotated[list[Label], Field(max_length=50)] = []


class InteractionCreate(_Request):
    """Something that happened with a customer: a call, a visit, a complaint, an e-mail."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "customer_id": EXAMPLE_ID,
                    "type": "support_call",
                    "channel": "phone",
                    "occurred_at": "2026-11-25T10:00:00Z",
                    "details": {"topic": "billing"},
                }
            ]
        }
    )

    customer_id: PublicId
    type: Label
    channel: Label
    occurred_at: Timestamp
    details: JsonObject = {}


class InteractionBatchCreate(_Request):
    """Several interactions recorded together: all of them or none."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {
                            "customer_id": EXAMPLE_ID,
                            "type": "email",
                            "channel": "web",
                            "occurred_at": "2026-11-25T10:00:00Z",
                        },
                        {
                            "customer_id": EXAMPLE_ID,
                            "type": "visit",
                            "channel": "shop",
                            "occurred_at": "2026-11-26T10:00:00Z",
                        },
                    ]
                }
            ]
        }
    )

    items: Annotated[list[InteractionCreate], Field(min_length=1)]


class OrderStatus(enum.StrEnum):
    """Where an order stands; a change of status is recorded as a new order record."""

    PENDING = "pending"
    PAID = "paid"
    SHIPPED = "shipped"
    DELIVERED = "delivered"
    CANCELLED = "cancelled"
    REFUNDED = "refunded"


class OrderLine(_Request):
    """One line of an order: how many of which SKU at what unit price."""

    sku: Label
    quantity: Annotated[StrictInt, Field(gt=0, le=1_000_000_000)]
    unit_price: Money


class OrderCreate(_Request):
    """An order; `total` must equal the sum of quantity * unit_price over the lines."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "customer_id": EXAMPLE_ID,
                    "order_number": "SO-1001",
                    "lines": [{"sku": "TEA-1", "quantity": 2, "unit_price": "10.50"}],
                    "total": "21.00",
                    "currency": "EUR",
                    "status": "paid",
                }
            ]
        }
    )

    customer_id: PublicId
    order_number: Label
    lines: Annotated[list[OrderLine], Field(min_length=1, max_length=1000)]
    total: Money
    currency: Currency
    status: OrderStatus
