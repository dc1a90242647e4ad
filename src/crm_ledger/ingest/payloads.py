"""Platform payloads → platform-neutral events: what an order, refund or customer says.

Exports: `ShopCustomer`, `OrderLine`, `OrderState`, `Refund`, `CustomerChange`, `OrderDeleted`,
`Redact`, `Event`, `parse_delivery`, `parse_order`, `TOPICS`, `load_json`.

Pure functions over the raw body. JSON is read with decimals for every number with a fraction,
so a platform that sends a price as a number (WooCommerce's line `price`) keeps its cents;
ids (64-bit integers at Shopify) become strings. Anything the ledger cannot state exactly (an
order without a currency, an amount that is not a decimal) raises `MappingError`.

Statuses are the journal's order statuses: pending, paid, shipped, delivered, cancelled,
refunded; the platform's own word is kept beside as `platform_status`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from crm_ledger.errors import MappingError
from crm_ledger.ingest.signatures import Platform

_DECIMAL = re.compile(r"-?\d{1,20}(\.\d{1,12})?", re.ASCII)
_CURRENCY = re.compile(r"[A-Z]{3}", re.ASCII)
_MAX_ID = 40


@dataclass(frozen=True, slots=True)
class ShopCustomer:
    """Who the shop says the buyer is; every field may be missing (a guest without an e-mail)."""

    external_id: str | None
    email: str | None
    name: str | None
    phone: str | None


@dataclass(frozen=True, slots=True)
class OrderLine:
    """One line: quantity and amounts as decimal strings."""

    sku: str | None
    name: str | None
    quantity: str
    unit_price: str
    total: str | None


@dataclass(frozen=True, slots=True)
class OrderState:
    """An order as the platform describes it now (created, updated, paid, cancelled...)."""

    order_id: str
    order_number: str
    currency: str
    total: str
    lines: tuple[OrderLine, ...]
    status: str
    platform_status: str
    created_at: datetime | None
    updated_at: datetime | None
    customer: ShopCustomer
    # Refunds the order itself lists (WooCommerce, Magento): (refund id, amount).
    refunds: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Refund:
    """Money given back on an order (Shopify refunds/create, Magento credit memos)."""

    order_id: str
    refund_id: str
    amount: str
    created_at: datetime | None


@dataclass(frozen=True, slots=True)
class CustomerChange:
    """A customer created or updated in the shop."""

    customer: ShopCustomer
    updated_at: datetime | None


@dataclass(frozen=True, slots=True)
class OrderDeleted:
    """An order deleted in the shop (WooCommerce order.deleted: only its id)."""

    order_id: str


@dataclass(frozen=True, slots=True)
class Redact:
    """Shopify customers/redact: erase the customer's personal data."""

    customer: ShopCustomer


Event = OrderState | Refund | CustomerChange | OrderDeleted | Redact

TOPICS: dict[Platform, frozenset[str]] = {
    Platform.SHOPIFY: frozenset(
        {
            "orders/create",
            "orders/updated",
            "orders/paid",
            "orders/cancelled",
            "refunds/create",
            "customers/create",
            "customers/update",
            "customers/redact",
        }
    ),
    Platform.WOOCOMMERCE: frozenset(
        {
            "order.created",
            "order.updated",
            "order.deleted",
            "order.restored",
            "customer.created",
            "customer.updated",
        }
    ),
    Platform.MAGENTO: frozenset(
        {
            "observer.sales_order_place_after",
            "observer.sales_order_save_after",
            "observer.sales_order_creditmemo_save_after",
            "observer.customer_register_success",
            "observer.customer_save_after",
        }
    ),
}


def load_json(body: bytes) -> Any:
    """The body as JSON, numbers with a fraction as `Decimal` (never a binary float)."""
    try:
        return json.loads(body, parse_float=Decimal)
    except (ValueError, RecursionError):
        raise MappingError("the body is not valid JSON") from None


def parse_delivery(platform: Platform, topic: str, body: bytes) -> Event:
    """The event a delivery of `topic` describes; raises `MappingError`."""
    if topic not in TOPICS[platform]:
        known = ", ".join(sorted(TOPICS[platform]))
        raise MappingError(
            f"topic {topic!r} is not one crm-ledger maps for {platform.value} (known: {known}); "
            "remove it from the shop's webhooks, or retry the delivery after an upgrade"
        )
    document = load_json(body)
    if not isinstance(document, dict):
        raise MappingError("the body is not a JSON object")
    if platform is Platform.SHOPIFY:
        return _shopify(topic, document)
    if platform is Platform.WOOCOMMERCE:
        return _woocommerce(topic, document)
    return _magento(topic, document)


def parse_order(platform: Platform, document: dict[str, Any]) -> OrderState:
    """An order object as the platform's REST API returns it (the backfill reads these)."""
    if platform is Platform.SHOPIFY:
        return _shopify_order(document)
    if platform is Platform.WOOCOMMERCE:
        return _woo_order(document)
    return _magento_order(document)


# Shopify ---------------------------------------------------------------------------------------


def _shopify(topic: str, doc: dict[str, Any]) -> Event:
    if topic.startswith("orders/"):
        return _shopify_order(doc)
    if topic == "refunds/create":
        return _shopify_refund(doc)
    if topic == "customers/redact":
        customer = _object(doc.get("customer"), "customer")
        return Redact(customer=_shopify_customer(customer, fallback_email=None))
    return CustomerChange(
        customer=_shopify_customer(doc, fallback_email=None),
        updated_at=_time(doc.get("updated_at"), "updated_at"),
    )


def _shopify_customer(doc: dict[str, Any] | None, *, fallback_email: object) -> ShopCustomer:
    if not doc:
        return ShopCustomer(None, _text(fallback_email), None, None)
    return ShopCustomer(
        external_id=_optional_id(doc.get("id"), "customer.id"),
        email=_text(doc.get("email")) or _text(fallback_email),
        name=_full_name(doc.get("first_name"), doc.get("last_name")),
        phone=_text(doc.get("phone")),
    )


def _shopify_order(doc: dict[str, Any]) -> OrderState:
    financial = _text(doc.get("financial_status")) or "pending"
    fulfillment = _text(doc.get("fulfillment_status"))
    if doc.get("cancelled_at") or financial == "voided":
        status = "cancelled"
    elif financial == "refunded":
        status = "refunded"
    elif financial in ("paid", "partially_refunded"):
        status = "shipped" if fulfillment == "fulfilled" else "paid"
    else:
        status = "pending"
    lines = tuple(
        OrderLine(
            sku=_text(line.get("sku")),
            name=_text(line.get("title") or line.get("name")),
            quantity=_decimal(line.get("quantity"), f"line_items[{i}].quantity"),
            unit_price=_decimal(line.get("price"), f"line_items[{i}].price"),
            total=None,
        )
        for i, line in enumerate(_objects(doc.get("line_items"), "line_items"))
    )
    customer = doc.get("customer")
    return OrderState(
        order_id=_id(doc.get("id"), "id"),
        order_number=_text(doc.get("name")) or str(_id(doc.get("order_number"), "order_number")),
        currency=_currency(doc.get("currency"), "currency"),
        total=_decimal(doc.get("total_price"), "total_price"),
        lines=lines,
        status=status,
        platform_status=financial + (f"/{fulfillment}" if fulfillment else ""),
        created_at=_time(doc.get("created_at"), "created_at"),
        updated_at=_time(doc.get("updated_at"), "updated_at"),
        customer=_shopify_customer(
            customer if isinstance(customer, dict) else None,
            fallback_email=doc.get("email") or doc.get("contact_email"),
        ),
    )


def _shopify_refund(doc: dict[str, Any]) -> Refund:
    amount = Decimal(0)
    transactions = _objects(doc.get("transactions"), "transactions", required=False)
    counted = False
    for i, transaction in enumerate(transactions):
        if transaction.get("kind") == "refund" and transaction.get("status") in (None, "success"):
            amount += Decimal(_decimal(transaction.get("amount"), f"transactions[{i}].amount"))
            counted = True
    if not counted:
        for i, item in enumerate(_objects(doc.get("refund_line_items"), "refund_line_items")):
            amount += Decimal(_decimal(item.get("subtotal"), f"refund_line_items[{i}].subtotal"))
    return Refund(
        order_id=_id(doc.get("order_id"), "order_id"),
        refund_id=_id(doc.get("id"), "id"),
        amount=_format(amount),
        created_at=_time(doc.get("created_at"), "created_at"),
    )


# WooCommerce -----------------------------------------------------------------------------------

_WOO_STATUS = {
    "pending": "pending",
    "on-hold": "pending",
    "failed": "pending",
    "checkout-draft": "pending",
    "processing": "paid",
    "completed": "delivered",
    "cancelled": "cancelled",
    "refunded": "refunded",
    "trash": "cancelled",
}


def _woocommerce(topic: str, doc: dict[str, Any]) -> Event:
    if topic == "order.deleted":
        return OrderDeleted(order_id=_id(doc.get("id"), "id"))
    if topic.startswith("order."):
        return _woo_order(doc)
    billing = doc.get("billing") if isinstance(doc.get("billing"), dict) else {}
    assert isinstance(billing, dict)
    return CustomerChange(
        customer=ShopCustomer(
            external_id=_id(doc.get("id"), "id"),
            email=_text(doc.get("email")) or _text(billing.get("email")),
            name=_full_name(doc.get("first_name"), doc.get("last_name")),
            phone=_text(billing.get("phone")),
        ),
        updated_at=_gmt(doc.get("date_modified_gmt"), "date_modified_gmt"),
    )


def _woo_order(doc: dict[str, Any]) -> OrderState:
    platform_status = _text(doc.get("status")) or "pending"
    if platform_status not in _WOO_STATUS:
        raise MappingError(f"status {platform_status!r} is not a WooCommerce order status")
    billing = doc.get("billing") if isinstance(doc.get("billing"), dict) else {}
    assert isinstance(billing, dict)
    customer_id = _optional_id(doc.get("customer_id"), "customer_id")
    lines = tuple(
        OrderLine(
            sku=_text(line.get("sku")),
            name=_text(line.get("name")),
            quantity=_decimal(line.get("quantity"), f"line_items[{i}].quantity"),
            unit_price=_decimal(line.get("price"), f"line_items[{i}].price"),
            total=_decimal(line.get("total"), f"line_items[{i}].total"),
        )
        for i, line in enumerate(_objects(doc.get("line_items"), "line_items"))
    )
    refunds = tuple(
        (
            _id(refund.get("id"), f"refunds[{i}].id"),
            _format(abs(Decimal(_decimal(refund.get("total"), f"refunds[{i}].total")))),
        )
        for i, refund in enumerate(_objects(doc.get("refunds"), "refunds", required=False))
    )
    return OrderState(
        order_id=_id(doc.get("id"), "id"),
        order_number=_text(doc.get("number")) or _id(doc.get("id"), "id"),
        currency=_currency(doc.get("currency"), "currency"),
        total=_decimal(doc.get("total"), "total"),
        lines=lines,
        status=_WOO_STATUS[platform_status],
        platform_status=platform_status,
        created_at=_gmt(doc.get("date_created_gmt"), "date_created_gmt"),
        updated_at=_gmt(doc.get("date_modified_gmt"), "date_modified_gmt"),
        customer=ShopCustomer(
            # WooCommerce says 0 for a guest.
            external_id=None if customer_id in (None, "0") else customer_id,
            email=_text(billing.get("email")),
            name=_full_name(billing.get("first_name"), billing.get("last_name")),
            phone=_text(billing.get("phone")),
        ),
        refunds=refunds,
    )


# Magento / Adobe Commerce ----------------------------------------------------------------------

_MAGENTO_STATE = {
    "new": "pending",
    "pending_payment": "pending",
    "payment_review": "pending",
    "holded": "pending",
    "processing": "paid",
    "complete": "delivered",
    "canceled": "cancelled",
    "closed": "refunded",
}


def _magento(topic: str, doc: dict[str, Any]) -> Event:
    data = _object(doc.get("data"), "data")
    if topic == "observer.sales_order_creditmemo_save_after":
        memo = _object(data.get("creditmemo"), "data.creditmemo")
        return Refund(
            order_id=_id(memo.get("order_id"), "data.creditmemo.order_id"),
            refund_id=_id(memo.get("entity_id"), "data.creditmemo.entity_id"),
            amount=_decimal(memo.get("grand_total"), "data.creditmemo.grand_total"),
            created_at=_gmt(memo.get("created_at"), "data.creditmemo.created_at"),
        )
    if topic.startswith("observer.sales_order"):
        return _magento_order(_object(data.get("order"), "data.order"))
    customer = _object(data.get("customer"), "data.customer")
    return CustomerChange(
        customer=ShopCustomer(
            external_id=_id(customer.get("entity_id", customer.get("id")), "data.customer.id"),
            email=_text(customer.get("email")),
            name=_full_name(customer.get("firstname"), customer.get("lastname")),
            phone=None,
        ),
        updated_at=_gmt(customer.get("updated_at"), "data.customer.updated_at"),
    )


def _magento_order(doc: dict[str, Any]) -> OrderState:
    state = _text(doc.get("state")) or "new"
    if state not in _MAGENTO_STATE:
        raise MappingError(f"state {state!r} is not a Magento order state")
    guest = doc.get("customer_is_guest") in (True, 1, "1")
    lines = tuple(
        OrderLine(
            sku=_text(item.get("sku")),
            name=_text(item.get("name")),
            quantity=_decimal(item.get("qty_ordered"), f"items[{i}].qty_ordered"),
            unit_price=_decimal(item.get("price"), f"items[{i}].price"),
            total=_decimal(item.get("row_total"), f"items[{i}].row_total")
            if item.get("row_total") is not None
            else None,
        )
        for i, item in enumerate(_objects(doc.get("items"), "items"))
    )
    return OrderState(
        order_id=_id(doc.get("entity_id"), "entity_id"),
        order_number=_text(doc.get("increment_id")) or _id(doc.get("entity_id"), "entity_id"),
        currency=_currency(doc.get("order_currency_code"), "order_currency_code"),
        total=_decimal(doc.get("grand_total"), "grand_total"),
        lines=lines,
        status=_MAGENTO_STATE[state],
        platform_status=f"{state}/{_text(doc.get('status')) or state}",
        created_at=_gmt(doc.get("created_at"), "created_at"),
        updated_at=_gmt(doc.get("updated_at"), "updated_at"),
        customer=ShopCustomer(
            external_id=None if guest else _optional_id(doc.get("customer_id"), "customer_id"),
            email=_text(doc.get("customer_email")),
            name=_full_name(doc.get("customer_firstname"), doc.get("customer_lastname")),
            phone=None,
        ),
    )


# Field readers -------------------------------------------------------------------------------


def _object(value: object, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MappingError(f"{field} is missing or not an object")
    return value


def _objects(value: object, field: str, *, required: bool = True) -> list[dict[str, Any]]:
    if value is None and not required:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise MappingError(f"{field} is missing or not a list of objects")
    return value


def _optional_id(value: object, field: str) -> str | None:
    return None if value is None or value == "" else _id(value, field)


def _id(value: object, field: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if isinstance(value, str) and value.strip() and len(value) <= _MAX_ID:
        return value.strip()
    raise MappingError(f"{field} is missing or not an id (an integer or a short string)")


def _text(value: object) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()[:200]
    return None


def _full_name(first: object, last: object) -> str | None:
    parts = [part for part in (_text(first), _text(last)) if part]
    return " ".join(parts)[:200] if parts else None


def _currency(value: object, field: str) -> str:
    if isinstance(value, str) and _CURRENCY.fullmatch(value.strip().upper()):
        return value.strip().upper()
    raise MappingError(
        f"{field} is missing or not an ISO 4217 code: the order does not state its currency, "
        "so its amounts cannot be recorded"
    )


def _decimal(value: object, field: str) -> str:
    """A decimal string exactly as the shop wrote it (numbers: their JSON digits)."""
    if isinstance(value, bool):
        raise MappingError(f"{field} is a boolean, not an amount")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal):
        return _format(value)
    if isinstance(value, str) and _DECIMAL.fullmatch(value.strip()):
        return value.strip()
    raise MappingError(f'{field} is missing or not a decimal amount such as "10.50"')


def _format(value: Decimal) -> str:
    try:
        return format(value, "f")
    except (InvalidOperation, ValueError):
        raise MappingError(f"{value} is not a finite amount") from None


def _time(value: object, field: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise MappingError(f"{field} is not a date-time")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise MappingError(f"{field} {value!r} is not an ISO 8601 date-time") from None
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _gmt(value: object, field: str) -> datetime | None:
    """WooCommerce `*_gmt` and Magento times: no offset, UTC."""
    if isinstance(value, str):
        value = value.strip().replace(" ", "T", 1)
    return _time(value, field)
