"""Each platform's webhook signature over the raw body, compared in constant time.

Exports: `Platform` (defined in `ingest.schemas`), `PlatformHeaders`, `HEADERS`,
`MAGENTO_HMAC_HEADER`, `SHOPIFY_EVENT_HEADER`, `hmac_sha256_base64`, `hmac_matches`,
`rsa_matches`, `load_public_key`.

- Shopify and WooCommerce: base64 HMAC-SHA256 of the raw body under the shared secret, in
  `X-Shopify-Hmac-Sha256` / `X-WC-Webhook-Signature`.
- Magento / Adobe Commerce: base64 RSA-SHA256 (PKCS #1 v1.5) of the raw body, made with the
  shop's private key, in `x-adobe-commerce-webhook-signature`, checked with the public key the
  admin shows; extensions that sign with a shared secret instead send base64 HMAC-SHA256 in
  `X-Magento-Hmac-Sha256` (`MAGENTO_HMAC_HEADER`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from crm_ledger.ingest.schemas import Platform as Platform  # its home; imported from here too

MAGENTO_HMAC_HEADER = "x-magento-hmac-sha256"
#: Shopify: the same event delivered twice (a retry, or two subscriptions to one topic) carries
#: the same event id, whatever its webhook id.
SHOPIFY_EVENT_HEADER = "x-shopify-event-id"


@dataclass(frozen=True, slots=True)
class PlatformHeaders:
    """Where a platform puts the signature, topic and delivery id (lower-case names)."""

    signature: str
    topic: str | None
    delivery_id: str | None


HEADERS = {
    Platform.SHOPIFY: PlatformHeaders(
        signature="x-shopify-hmac-sha256",
        topic="x-shopify-topic",
        delivery_id="x-shopify-webhook-id",
    ),
    Platform.WOOCOMMERCE: PlatformHeaders(
        signature="x-wc-webhook-signature",
        topic="x-wc-webhook-topic",
        delivery_id="x-wc-webhook-delivery-id",
    ),
    Platform.MAGENTO: PlatformHeaders(
        signature="x-adobe-commerce-webhook-signature",
        topic=None,
        delivery_id="x-adobe-commerce-webhook-id",
    ),
}


def hmac_sha256_base64(secret: str, body: bytes) -> str:
    """base64 of HMAC-SHA256(secret, body): what Shopify and WooCommerce send."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def hmac_matches(secrets: list[str], body: bytes, header: str | None) -> bool:
    """True when `header` is the base64 HMAC-SHA256 of `body` under one of `secrets`."""
    if not header:
        return False
    try:
        sent = base64.b64decode(header.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    matched = False
    for secret in secrets:
        expected = hmac.new(secret.encode(), body, hashlib.sha256).digest()
        # Every secret is compared, so the time taken does not say which one matched.
        matched |= hmac.compare_digest(expected, sent)
    return matched


def load_public_key(pem: str) -> rsa.RSAPublicKey:
    """The RSA public key in `pem`; raises `ValueError` for anything else."""
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError("not a PEM public key (-----BEGIN PUBLIC KEY-----)") from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("the public key is not an RSA key; Adobe Commerce signs with RSA")
    return key


def rsa_matches(pem: str, body: bytes, header: str | None) -> bool:
    """True when `header` is a base64 RSA-SHA256 (PKCS #1 v1.5) signature of `body`."""
    if not header:
        return False
    try:
        signature = base64.b64decode(header.strip(), validate=True)
        load_public_key(pem).verify(signature, body, padding.PKCS1v15(), hashes.SHA256())
    except (binascii.Error, ValueError, InvalidSignature):
        return False
    return True
