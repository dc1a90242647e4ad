"""Platform payloads → events and signatures, without a database: exact ids and amounts, the
statuses each platform uses, and what cannot be mapped."""

from __future__ import annotations

import base64
from decimal import Decimal

import pytest

from crm_ledger.errors import MappingError
from crm_ledger.ingest.payloads import (
    CustomerChange,
    OrderDeleted,
    OrderState,
    Redact,
    Refund,
    parse_delivery,
)
from crm_ledger.ingest.signatures import (
    Platform,
    hmac_matches,
    hmac_sha256_base64,
    load_public_key,
    rsa_matches,
)
from tests.ingest.shops import (
    SHOPIFY_CUSTOMER_ID,
    SHOPIFY_ORDER_ID,
    MagentoKeys,
    body_of,
    magento_order_event,
    shopify_order,
    shopify_redact,
    shopify_refund,
    woo_customer,
    woo_order,
)


def test_shopify_ids_beyond_2_53_and_string_prices_stay_exact() -> None:
    event = parse_delivery(Platform.SHOPIFY, "orders/create", body_of(shopify_order()))
    assert isinstance(event, OrderState)
    assert event.order_id == "5764600419000000123" == str(SHOPIFY_ORDER_ID)
    assert event.customer.external_id == str(SHOPIFY_CUSTOMER_ID)
    assert (event.total, event.lines[0].unit_price, event.currency) == ("199.00", "99.50", "EUR")


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        ({}, "paid"),
        ({"fulfillment_status": "fulfilled"}, "shipped"),
        ({"financial_status": "pending"}, "pending"),
        ({"financial_status": "refunded"}, "refunded"),
        ({"financial_status": "voided"}, "cancelled"),
        ({"cancelled_at": "2026-11-26T10:00:00-05:00"}, "cancelled"),
    ],
)
def test_shopify_statuses(changes: dict[str, object], status: str) -> None:
    event = parse_delivery(Platform.SHOPIFY, "orders/updated", body_of(shopify_order(**changes)))
    assert isinstance(event, OrderState) and event.status == status


def test_shopify_guest_order_with_a_null_email_and_no_customer() -> None:
    guest = shopify_order(customer=None, email=None, contact_email=None)
    event = parse_delivery(Platform.SHOPIFY, "orders/create", body_of(guest))
    assert isinstance(event, OrderState)
    assert (event.customer.external_id, event.customer.email) == (None, None)


def test_shopify_refund_amount_is_the_sum_of_successful_refund_transactions() -> None:
    refund = shopify_refund("10.10")
    refund["transactions"].append({**refund["transactions"][0], "id": 2, "amount": "0.20"})
    refund["transactions"].append(
        {**refund["transactions"][0], "id": 3, "amount": "5.00", "status": "failure"}
    )
    event = parse_delivery(Platform.SHOPIFY, "refunds/create", body_of(refund))
    assert isinstance(event, Refund)
    assert (event.amount, event.order_id) == ("10.30", str(SHOPIFY_ORDER_ID))


def test_shopify_redact() -> None:
    event = parse_delivery(Platform.SHOPIFY, "customers/redact", body_of(shopify_redact()))
    assert isinstance(event, Redact) and event.customer.external_id == str(SHOPIFY_CUSTOMER_ID)


def test_woocommerce_numbers_keep_their_cents_and_guests_have_no_id() -> None:
    body = body_of(woo_order(customer_id=0, total=59.97))
    assert b'"price":19.99' in body and b'"total":59.97' in body
    event = parse_delivery(Platform.WOOCOMMERCE, "order.created", body)
    assert isinstance(event, OrderState)
    assert (event.total, event.lines[0].unit_price) == ("59.97", "19.99")
    assert (event.customer.external_id, event.customer.email) == (None, "grace@example.com")
    assert Decimal(event.lines[0].unit_price) * 3 == Decimal(event.total)


def test_woocommerce_refunds_deletion_and_customers() -> None:
    refunded = woo_order(refunds=[{"id": 9, "total": "-5.10"}, {"id": 10, "total": "-0.05"}])
    event = parse_delivery(Platform.WOOCOMMERCE, "order.updated", body_of(refunded))
    assert isinstance(event, OrderState) and event.refunds == (("9", "5.10"), ("10", "0.05"))
    deleted = parse_delivery(Platform.WOOCOMMERCE, "order.deleted", body_of({"id": 727}))
    assert deleted == OrderDeleted(order_id="727")
    customer = parse_delivery(Platform.WOOCOMMERCE, "customer.updated", body_of(woo_customer()))
    assert isinstance(customer, CustomerChange) and customer.customer.name == "Grace Hopper"


def test_magento_guest_and_credit_memo() -> None:
    guest = magento_order_event(customer_is_guest="1", customer_id=None)
    event = parse_delivery(Platform.MAGENTO, "observer.sales_order_place_after", body_of(guest))
    assert isinstance(event, OrderState) and event.customer.external_id is None
    memo = {
        "eventName": "observer.sales_order_creditmemo_save_after",
        "data": {"creditmemo": {"entity_id": "7", "order_id": "1042", "grand_total": "20.2500"}},
    }
    refund = parse_delivery(
        Platform.MAGENTO, "observer.sales_order_creditmemo_save_after", body_of(memo)
    )
    assert refund == Refund(order_id="1042", refund_id="7", amount="20.2500", created_at=None)


@pytest.mark.parametrize(
    ("platform", "topic", "document", "message"),
    [
        (Platform.SHOPIFY, "products/create", {"id": 1}, "topic 'products/create' is not one"),
        (Platform.SHOPIFY, "orders/create", shopify_order(currency=None), "currency is missing"),
        (Platform.SHOPIFY, "orders/create", shopify_order(total_price=True), "a boolean"),
        (Platform.SHOPIFY, "orders/create", shopify_order(total_price="1e3"), "not a decimal"),
        (Platform.SHOPIFY, "orders/create", shopify_order(line_items=None), "line_items"),
        (Platform.WOOCOMMERCE, "order.created", woo_order(status="shipped"), "not a WooCommerce"),
        (Platform.MAGENTO, "observer.sales_order_place_after", {"eventName": "x"}, "data is"),
    ],
)
def test_what_cannot_be_mapped_says_why(
    platform: Platform, topic: str, document: dict[str, object], message: str
) -> None:
    with pytest.raises(MappingError, match=message):
        parse_delivery(platform, topic, body_of(document))


def test_hmac_signatures_compare_every_secret_and_refuse_garbage() -> None:
    # RFC 4231, test case 2.
    rfc = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    assert (
        hmac_sha256_base64("Jefe", b"what do ya want for nothing?")
        == base64.b64encode(bytes.fromhex(rfc)).decode()
    )
    body = b'{"id":1}'
    header = hmac_sha256_base64("new-secret", body)
    assert hmac_matches(["old-secret", "new-secret"], body, header)
    assert not hmac_matches(["old-secret"], body, header)
    assert not hmac_matches(["new-secret"], body + b" ", header)
    assert not hmac_matches(["new-secret"], body, None)
    assert not hmac_matches(["new-secret"], body, "not base64!")
    assert not hmac_matches([], body, header)


def test_rsa_signatures_of_adobe_commerce() -> None:
    keys = MagentoKeys()
    body = body_of(magento_order_event())
    signature = keys.headers(body)["x-adobe-commerce-webhook-signature"]
    assert rsa_matches(keys.public_pem, body, signature)
    assert not rsa_matches(keys.public_pem, body.replace(b"120.5", b"120.6"), signature)
    assert not rsa_matches(MagentoKeys().public_pem, body, signature)
    assert not rsa_matches(keys.public_pem, body, None)
    with pytest.raises(ValueError, match="PEM"):
        load_public_key("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
