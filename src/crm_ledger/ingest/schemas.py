"""Request and response documents of the sources and webhook endpoints (pydantic only: the
client library reads them too, without the service's dependencies).

Exports: `Platform`, `SourceCreate`, `SourceRotate`, `SourcePublic`, `SourcesPublic`,
`ClawbackPublic`, `ClawbacksPublic`, `DeliveryPublic`, `DeliveriesPublic`, `WebhookAccepted`.
"""

from __future__ import annotations

import enum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from crm_ledger.journal.schemas import Name

Secret = Annotated[str, StringConstraints(min_length=8, max_length=512)]
Pem = Annotated[str, StringConstraints(min_length=64, max_length=8192)]


class Platform(enum.StrEnum):
    """The shop platforms a source can be."""

    SHOPIFY = "shopify"
    WOOCOMMERCE = "woocommerce"
    MAGENTO = "magento"


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceCreate(_Request):
    """A shop to accept webhooks from: Shopify and WooCommerce sign with `secret`, Magento
    with the key pair whose `public_key` is given (and/or a `secret` for HMAC extensions).
    The secret is the shop's: Shopify shows it under Settings > Notifications > Webhooks."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"platform": "shopify", "name": "Main shop", "secret": "example-secret"}]
        }
    )

    platform: Platform
    name: Name
    secret: Secret | None = Field(default=None, description="shared HMAC secret; never returned")
    public_key: Pem | None = Field(default=None, description="Magento: PEM RSA public key")


class SourceRotate(_Request):
    """The new secret (and/or, for Magento, the new public key)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"secret": "example-secret-2"}]})

    secret: Secret | None = None
    public_key: Pem | None = None


class SourcePublic(BaseModel):
    """A source as the API shows it: never its secret."""

    id: str
    platform: Platform
    name: str
    webhook_url: str
    has_secret: bool
    has_public_key: bool
    previous_secret_valid_until: str | None
    created_at: str
    rotated_at: str | None
    deleted_at: str | None


class SourcesPublic(BaseModel):
    """Every source, oldest first."""

    items: list[SourcePublic]


class DeliveryPublic(BaseModel):
    """A stored delivery: its metadata and outcome, never its body."""

    id: str
    delivery_id: str
    topic: str
    status: str
    error: str | None
    attempts: int
    body_sha256: str
    body_size: int
    body_kept: bool
    record_ids: list[str]
    received_at: str
    mapped_at: str | None


class DeliveriesPublic(BaseModel):
    """A page of deliveries, newest first."""

    items: list[DeliveryPublic]
    next_cursor: str | None


class WebhookAccepted(BaseModel):
    """The webhook answer: stored (or already stored) and queued for mapping.

    `op` is "success" for Adobe Commerce, which reads it."""

    accepted: bool
    duplicate: bool
    delivery_id: str | None
    op: str = "success"


class ClawbackPublic(BaseModel):
    """Points a refund or cancellation took back; `shortfall_points` the customer had spent."""

    order_id: str
    order_number: str
    customer_id: str
    requested_points: int
    burned_points: int
    shortfall_points: int
    redemption_id: str | None
    created_at: str


class ClawbacksPublic(BaseModel):
    """A source's clawbacks, newest first."""

    items: list[ClawbackPublic]
