"""Webhook payloads shaped as each platform documents them, and their signatures.

Written from the platforms' published field lists (Shopify Admin REST `Order`, `Refund`,
`Customer` and the `customers/redact` compliance payload; WooCommerce REST v3 `Order` and
`Customer`; Adobe Commerce webhooks `{eventName, data}`): 64-bit ids, prices as strings (and
WooCommerce's line `price` as a JSON number), nested customer and line items, null e-mails.
"""

from __future__ import annotations

import base64
import copy
import json
import uuid
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from crm_ledger.ingest.signatures import hmac_sha256_base64

SHOPIFY_SECRET = "shpss_0123456789abcdef0123456789abcdef"
WOO_SECRET = "wc-webhook-secret-7f3a"
MAGENTO_SECRET = "magento-hmac-secret-91b2"

# Beyond 2**53: a JSON reader that went through binary floats would change them.
SHOPIFY_ORDER_ID = 5_764_600_419_000_000_123
SHOPIFY_CUSTOMER_ID = 7_205_759_403_792_793_201
SHOPIFY_LINE_ID = 13_835_058_055_282_163_757


def shopify_customer(**overrides: Any) -> dict[str, Any]:
    """A Shopify `Customer` (customers/create, customers/update, and inside an order)."""
    customer: dict[str, Any] = {
        "id": SHOPIFY_CUSTOMER_ID,
        "email": "Ada.Lovelace@Example.com",
        "accepts_marketing": False,
        "created_at": "2026-11-20T09:00:00-05:00",
        "updated_at": "2026-11-20T09:00:00-05:00",
        "first_name": "Ada",
        "last_name": "Lovelace",
        "orders_count": 0,
        "state": "enabled",
        "total_spent": "0.00",
        "last_order_id": None,
        "note": None,
        "verified_email": True,
        "tax_exempt": False,
        "phone": "+441234567890",
        "tags": "",
        "currency": "EUR",
        "admin_graphql_api_id": f"gid://shopify/Customer/{SHOPIFY_CUSTOMER_ID}",
        "default_address": {
            "id": 9_007_199_254_740_993,
            "customer_id": SHOPIFY_CUSTOMER_ID,
            "address1": "12 St James's Square",
            "city": "London",
            "country_code": "GB",
            "zip": "SW1Y 4JH",
        },
    }
    customer.update(overrides)
    return customer


def shopify_order(**overrides: Any) -> dict[str, Any]:
    """A Shopify `Order` as orders/create sends it: paid, two lines, 2 x 99.50 EUR."""
    order: dict[str, Any] = {
        "id": SHOPIFY_ORDER_ID,
        "admin_graphql_api_id": f"gid://shopify/Order/{SHOPIFY_ORDER_ID}",
        "name": "#1001",
        "order_number": 1001,
        "number": 1,
        "email": "ada.lovelace@example.com",
        "contact_email": "ada.lovelace@example.com",
        "created_at": "2026-11-25T10:00:00-05:00",
        "updated_at": "2026-11-25T10:00:05-05:00",
        "processed_at": "2026-11-25T10:00:00-05:00",
        "cancelled_at": None,
        "cancel_reason": None,
        "closed_at": None,
        "currency": "EUR",
        "presentment_currency": "EUR",
        "financial_status": "paid",
        "fulfillment_status": None,
        "subtotal_price": "199.00",
        "total_price": "199.00",
        "total_tax": "0.00",
        "total_discounts": "0.00",
        "taxes_included": True,
        "test": False,
        "line_items": [
            {
                "id": SHOPIFY_LINE_ID,
                "variant_id": 44_000_000_000_000_001,
                "product_id": 8_000_000_000_000_001,
                "title": "Analytical Engine Poster",
                "name": "Analytical Engine Poster - A2",
                "sku": "AEP-A2",
                "quantity": 2,
                "price": "99.50",
                "price_set": {
                    "shop_money": {"amount": "99.50", "currency_code": "EUR"},
                    "presentment_money": {"amount": "99.50", "currency_code": "EUR"},
                },
                "total_discount": "0.00",
                "taxable": True,
                "requires_shipping": True,
                "fulfillment_status": None,
            }
        ],
        "customer": shopify_customer(),
        "billing_address": {"first_name": "Ada", "last_name": "Lovelace", "city": "London"},
        "refunds": [],
    }
    order.update(overrides)
    return order


def shopify_refund(amount: str = "99.50", **overrides: Any) -> dict[str, Any]:
    """A Shopify `Refund` (refunds/create) of one line, with its refund transaction."""
    refund: dict[str, Any] = {
        "id": 929_361_465_000_000_001,
        "order_id": SHOPIFY_ORDER_ID,
        "created_at": "2026-11-26T12:00:00-05:00",
        "processed_at": "2026-11-26T12:00:00-05:00",
        "note": "damaged in transit",
        "restock": True,
        "user_id": 548_380_009,
        "admin_graphql_api_id": "gid://shopify/Refund/929361465000000001",
        "refund_line_items": [
            {
                "id": 104_689_539,
                "line_item_id": SHOPIFY_LINE_ID,
                "quantity": 1,
                "restock_type": "return",
                "subtotal": amount,
                "total_tax": "0.00",
            }
        ],
        "transactions": [
            {
                "id": 179_259_969_000_000_001,
                "order_id": SHOPIFY_ORDER_ID,
                "kind": "refund",
                "gateway": "bogus",
                "status": "success",
                "amount": amount,
                "currency": "EUR",
            }
        ],
        "order_adjustments": [],
    }
    refund.update(overrides)
    return refund


def shopify_redact(**overrides: Any) -> dict[str, Any]:
    """The customers/redact compliance payload."""
    payload: dict[str, Any] = {
        "shop_id": 954_889,
        "shop_domain": "lovelace-prints.myshopify.com",
        "customer": {
            "id": SHOPIFY_CUSTOMER_ID,
            "email": "ada.lovelace@example.com",
            "phone": "+441234567890",
        },
        "orders_to_redact": [SHOPIFY_ORDER_ID],
    }
    payload.update(overrides)
    return payload


def woo_order(**overrides: Any) -> dict[str, Any]:
    """A WooCommerce REST v3 `Order` (order.created / order.updated): 3 x 19.99 USD."""
    order: dict[str, Any] = {
        "id": 727,
        "parent_id": 0,
        "number": "727",
        "order_key": "wc_order_58d2d042d1d",
        "created_via": "checkout",
        "version": "9.4.2",
        "status": "processing",
        "currency": "USD",
        "date_created": "2026-11-25T12:00:00",
        "date_created_gmt": "2026-11-25T10:00:00",
        "date_modified": "2026-11-25T12:00:05",
        "date_modified_gmt": "2026-11-25T10:00:05",
        "discount_total": "0.00",
        "shipping_total": "0.00",
        "total": "59.97",
        "total_tax": "0.00",
        "prices_include_tax": False,
        "customer_id": 26,
        "customer_note": "",
        "billing": {
            "first_name": "Grace",
            "last_name": "Hopper",
            "company": "",
            "address_1": "1 Navy Way",
            "city": "Arlington",
            "state": "VA",
            "postcode": "22202",
            "country": "US",
            "email": "grace@example.com",
            "phone": "(555) 555-5555",
        },
        "shipping": {"first_name": "Grace", "last_name": "Hopper", "city": "Arlington"},
        "payment_method": "bacs",
        "payment_method_title": "Direct Bank Transfer",
        "transaction_id": "",
        "date_paid": "2026-11-25T12:00:05",
        "date_paid_gmt": "2026-11-25T10:00:05",
        "date_completed": None,
        "date_completed_gmt": None,
        "line_items": [
            {
                "id": 315,
                "name": "Compiler Handbook",
                "product_id": 93,
                "variation_id": 0,
                "quantity": 3,
                "tax_class": "",
                "subtotal": "59.97",
                "subtotal_tax": "0.00",
                "total": "59.97",
                "total_tax": "0.00",
                "sku": "BOOK-COMP",
                # WooCommerce sends the unit price as a JSON number.
                "price": 19.99,
            }
        ],
        "refunds": [],
    }
    order.update(overrides)
    return order


def woo_customer(**overrides: Any) -> dict[str, Any]:
    """A WooCommerce REST v3 `Customer` (customer.created / customer.updated)."""
    customer: dict[str, Any] = {
        "id": 26,
        "date_created": "2026-11-20T11:00:00",
        "date_created_gmt": "2026-11-20T09:00:00",
        "date_modified": "2026-11-20T11:00:00",
        "date_modified_gmt": "2026-11-20T09:00:00",
        "email": "grace@example.com",
        "first_name": "Grace",
        "last_name": "Hopper",
        "role": "customer",
        "username": "grace.hopper",
        "billing": {"first_name": "Grace", "last_name": "Hopper", "phone": "(555) 555-5555"},
        "shipping": {"first_name": "Grace", "last_name": "Hopper"},
        "is_paying_customer": False,
        "avatar_url": "https://secure.gravatar.com/avatar/",
    }
    customer.update(overrides)
    return customer


def magento_order_event(
    event: str = "observer.sales_order_place_after", **order: Any
) -> dict[str, Any]:
    """An Adobe Commerce webhook body: the event name and the order under `data`."""
    document: dict[str, Any] = {
        "entity_id": "1042",
        "increment_id": "000000042",
        "state": "processing",
        "status": "processing",
        "customer_id": "77",
        "customer_is_guest": "0",
        "customer_email": "katherine@example.com",
        "customer_firstname": "Katherine",
        "customer_lastname": "Johnson",
        "order_currency_code": "EUR",
        "base_currency_code": "EUR",
        "grand_total": "120.5000",
        "subtotal": "120.5000",
        "total_refunded": None,
        "created_at": "2026-11-25 10:00:00",
        "updated_at": "2026-11-25 10:00:05",
        "items": [
            {
                "item_id": "5001",
                "sku": "SLIDE-RULE",
                "name": "Slide rule",
                "qty_ordered": "1.0000",
                "price": "120.5000",
                "row_total": "120.5000",
            }
        ],
    }
    document.update(order)
    return {"eventName": event, "data": {"order": document}}


def body_of(document: dict[str, Any]) -> bytes:
    """The raw body a platform would send (compact JSON)."""
    return json.dumps(document, separators=(",", ":")).encode()


def shopify_headers(
    body: bytes,
    topic: str,
    *,
    secret: str = SHOPIFY_SECRET,
    webhook_id: str | None = None,
    event_id: str | None = None,
) -> dict[str, str]:
    """Shopify's webhook headers, signed; a retry repeats the webhook id and the event id."""
    webhook_id = webhook_id or str(uuid.uuid4())
    return {
        "Content-Type": "application/json",
        "X-Shopify-Topic": topic,
        "X-Shopify-Hmac-Sha256": hmac_sha256_base64(secret, body),
        "X-Shopify-Shop-Domain": "lovelace-prints.myshopify.com",
        "X-Shopify-API-Version": "2026-10",
        "X-Shopify-Webhook-Id": webhook_id,
        "X-Shopify-Event-Id": event_id or f"event-of-{webhook_id}",
        "X-Shopify-Triggered-At": "2026-11-25T15:00:05.000Z",
    }


def woo_headers(
    body: bytes, topic: str, *, secret: str = WOO_SECRET, delivery_id: str | None = None
) -> dict[str, str]:
    """WooCommerce's webhook headers, signed."""
    resource, event = topic.split(".")
    return {
        "Content-Type": "application/json",
        "User-Agent": "WooCommerce/9.4.2 Hookshot (WordPress/6.7)",
        "X-WC-Webhook-Source": "https://hopper-books.example/",
        "X-WC-Webhook-Topic": topic,
        "X-WC-Webhook-Resource": resource,
        "X-WC-Webhook-Event": event,
        "X-WC-Webhook-Signature": hmac_sha256_base64(secret, body),
        "X-WC-Webhook-ID": "12",
        "X-WC-Webhook-Delivery-ID": delivery_id or uuid.uuid4().hex,
    }


class MagentoKeys:
    """An RSA key pair as Adobe Commerce generates for webhook signatures."""

    def __init__(self) -> None:
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_pem = (
            self.private.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    def headers(self, body: bytes) -> dict[str, str]:
        """The webhook's headers with its RSA-SHA256 signature."""
        signature = self.private.sign(body, padding.PKCS1v15(), hashes.SHA256())
        return {
            "Content-Type": "application/json",
            "x-adobe-commerce-webhook-signature": base64.b64encode(signature).decode(),
        }


def deep(document: dict[str, Any]) -> dict[str, Any]:
    """A copy to modify."""
    return copy.deepcopy(document)
