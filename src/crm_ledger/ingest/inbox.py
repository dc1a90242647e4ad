"""The durable inbox: webhook deliveries stored before the 200, mapped afterwards.

Exports: `Checked`, `DeliveryStatus`, `MalformedDelivery`, `check_delivery`, `pending_row`,
`insert_deliveries`, `stored_delivery_ids`, `list_deliveries`,
`retry_delivery`, `delivery_public`, `purge_failed_bodies`,
`is_woocommerce_ping`.

A delivery is verified (`signatures`, with its source's `VerifyingKeys`), checked to be a JSON
object, and inserted with its raw body; a unique (source, delivery id) constraint stores a
delivery id once, even when two identical deliveries race. The delivery id is the platform's
(`X-Shopify-Webhook-Id`, `X-WC-Webhook-Delivery-ID`); for Shopify, when `X-Shopify-Event-Id` is
present, it is `event:<event id>:<topic>`, so the same event reaching two subscriptions is
stored once too. Without one (Magento), the SHA-256 of the body stands in.

The body is personal data: it is deleted in the transaction that maps it, when its customer is
erased, and (for deliveries that failed) after `ingest_failed_retention_days`. What stays is a
SHA-256 of the body and the metadata.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from crm_ledger.db.models import IngestDelivery, new_id, utcnow
from crm_ledger.errors import BadRequest, Conflict, NotFound, Unauthorized
from crm_ledger.ingest.schemas import DeliveryPublic
from crm_ledger.ingest.signatures import (
    HEADERS,
    MAGENTO_HMAC_HEADER,
    SHOPIFY_EVENT_HEADER,
    Platform,
    hmac_matches,
    rsa_matches,
)
from crm_ledger.ingest.sources import VerifyingKeys, get_source
from crm_ledger.journal.customers import decode_cursor, encode_cursor
from crm_ledger.journal.schemas import format_timestamp, is_public_id, shorten

_PING = re.compile(rb"webhook_id=\d{1,20}")
_MAX_DELIVERY_ID = 200
_MAX_TOPIC = 100


class DeliveryStatus(enum.StrEnum):
    """pending until the worker maps it; mapped (body deleted) or failed (kept with its error)."""

    PENDING = "pending"
    MAPPED = "mapped"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Checked:
    """A verified delivery: whose it is, its delivery id and topic."""

    source_pk: int
    delivery_id: str
    topic: str


class MalformedDelivery(BadRequest):
    """A signed body that is not a JSON object: nothing is stored."""


def is_woocommerce_ping(platform: Platform, headers: Mapping[str, str], body: bytes) -> bool:
    """WooCommerce's ping when a webhook is saved: form-encoded `webhook_id=N`, no topic."""
    return (
        platform is Platform.WOOCOMMERCE
        and not headers.get(HEADERS[Platform.WOOCOMMERCE].topic or "")
        and _PING.fullmatch(body.strip()) is not None
    )


def check_delivery(
    *,
    keys: VerifyingKeys,
    headers: Mapping[str, str],
    body: bytes,
    now: datetime,
) -> Checked | None:
    """Verify a webhook with the source's `keys` at `now`; None for a WooCommerce ping.

    `headers` has lower-case names. Raises `Unauthorized` (missing or bad signature) and
    `MalformedDelivery` (not a JSON object).
    """
    if is_woocommerce_ping(keys.platform, headers, body):
        return None
    names = HEADERS[keys.platform]
    secrets = keys.secrets(now)
    if not _signed(keys.platform, secrets, keys.public_key, headers, body, names.signature):
        raise Unauthorized(
            f"the webhook signature ({names.signature}) does not match the body under this "
            "source's secret: check that the secret pasted in the shop is the one this source "
            "was created or last rotated with"
        )
    document = _json_object(body)
    if keys.platform is Platform.MAGENTO:
        topic = document.get("eventName")
        topic = topic if isinstance(topic, str) else ""
    else:
        topic = headers.get(names.topic or "", "")
    delivery_id = headers.get(names.delivery_id or "", "").strip()
    event_id = headers.get(SHOPIFY_EVENT_HEADER, "").strip()
    if keys.platform is Platform.SHOPIFY and event_id:
        delivery_id = f"event:{event_id}:{topic}"
    if not delivery_id or len(delivery_id) > _MAX_DELIVERY_ID:
        delivery_id = "sha256:" + hashlib.sha256(body).hexdigest()
    return Checked(source_pk=keys.source_pk, delivery_id=delivery_id, topic=topic[:_MAX_TOPIC])


def pending_row(*, source_pk: int, delivery_id: str, topic: str, body: bytes) -> dict[str, Any]:
    """The `ingest_deliveries` row of a delivery waiting to be mapped."""
    return {
        "id": new_id(),
        "source_pk": source_pk,
        "delivery_id": delivery_id,
        "topic": topic,
        "status": DeliveryStatus.PENDING.value,
        "body": body,
        "body_sha256": hashlib.sha256(body).digest(),
        "body_size": len(body),
        "attempts": 0,
        "record_ids": [],
        "received_at": utcnow(),
    }


def insert_deliveries(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert `pending_row`s (one statement); a delivery id already stored raises
    `IntegrityError`."""
    if rows:
        session.execute(insert(IngestDelivery), rows)


def stored_delivery_ids(session: Session, source_pk: int, delivery_ids: list[str]) -> set[str]:
    """Which of `delivery_ids` the source's inbox holds already."""
    return set(
        session.scalars(
            select(IngestDelivery.delivery_id).where(
                IngestDelivery.source_pk == source_pk,
                IngestDelivery.delivery_id.in_(delivery_ids),
            )
        )
    )


def list_deliveries(
    *,
    session: Session,
    source_id: str,
    status: DeliveryStatus | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[IngestDelivery], str | None]:
    """A source's deliveries newest first, `limit` at a time, optionally of one status."""
    source = get_source(session=session, source_id=source_id)
    query = (
        select(IngestDelivery)
        .where(IngestDelivery.source_pk == source.pk)
        .order_by(IngestDelivery.pk.desc())
        .limit(limit + 1)
    )
    if status is not None:
        query = query.where(IngestDelivery.status == status.value)
    if cursor is not None:
        query = query.where(IngestDelivery.pk < decode_cursor(cursor))
    rows = list(session.scalars(query))
    items = rows[:limit]
    return items, encode_cursor(items[-1].pk) if len(rows) > limit else None


def retry_delivery(*, session: Session, source_id: str, delivery_id: str) -> IngestDelivery:
    """Queue a failed delivery for mapping again; raises `NotFound` or `Conflict`."""
    source = get_source(session=session, source_id=source_id)
    delivery = None
    if is_public_id(delivery_id):
        delivery = session.scalars(
            select(IngestDelivery)
            .where(
                IngestDelivery.source_pk == source.pk,
                IngestDelivery.id == delivery_id.lower(),
            )
            .with_for_update()
        ).first()
    if delivery is None:
        shown = shorten(delivery_id)
        raise NotFound(f"no delivery {shown!r} for source {source.id}", delivery_id=shown)
    if delivery.status != DeliveryStatus.FAILED.value:
        raise Conflict(
            f"delivery {delivery.id} is {delivery.status}; only failed deliveries are retried",
            delivery_status=delivery.status,
        )
    if delivery.body is None:
        raise Conflict(
            f"delivery {delivery.id} no longer holds its body (erased or past retention); "
            "resend it from the shop",
            delivery_status=delivery.status,
        )
    delivery.status = DeliveryStatus.PENDING.value
    delivery.error = None
    session.flush()
    return delivery


def delivery_public(delivery: IngestDelivery) -> DeliveryPublic:
    """The public form of a delivery (never its body)."""
    return DeliveryPublic(
        id=delivery.id,
        delivery_id=delivery.delivery_id,
        topic=delivery.topic,
        status=delivery.status,
        error=delivery.error,
        attempts=delivery.attempts,
        body_sha256=delivery.body_sha256.hex(),
        body_size=delivery.body_size,
        body_kept=delivery.body is not None,
        record_ids=list(delivery.record_ids or []),
        received_at=format_timestamp(delivery.received_at),
        mapped_at=format_timestamp(delivery.mapped_at) if delivery.mapped_at else None,
    )


def purge_failed_bodies(session: Session, *, retention_days: float) -> int:
    """Delete the bodies of failed deliveries received more than `retention_days` ago."""
    cutoff = utcnow() - timedelta(days=retention_days)
    result = session.execute(
        update(IngestDelivery)
        .where(
            IngestDelivery.status == DeliveryStatus.FAILED.value,
            IngestDelivery.received_at < cutoff,
            IngestDelivery.body.is_not(None),
        )
        .values(body=None)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def _signed(
    platform: Platform,
    secrets: list[str],
    public_key: str | None,
    headers: Mapping[str, str],
    body: bytes,
    signature_header: str,
) -> bool:
    if platform is Platform.MAGENTO:
        if public_key is not None and rsa_matches(public_key, body, headers.get(signature_header)):
            return True
        return bool(secrets) and hmac_matches(secrets, body, headers.get(MAGENTO_HMAC_HEADER))
    return hmac_matches(secrets, body, headers.get(signature_header))


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise MalformedDelivery(
            "the webhook body is not valid JSON; nothing was stored (the platform sends "
            "JSON with Content-Type: application/json)"
        ) from None
    if not isinstance(document, dict):
        raise MalformedDelivery("the webhook body is JSON but not an object; nothing was stored")
    return document
