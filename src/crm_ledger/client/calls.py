"""Every endpoint the client uses, as a `Call` to send and a parser for the answer.

Exports: one function per call (`create_customer`, `get_record`, ...), `validated`, `parse`,
`PAGE_SIZE`, `RECEIPT_POLL_SECONDS`, and what both kinds of resources share (`customer_body`,
`interaction_body`, `receipt_or_wait`, `not_anchored`). The resources (`async_resources`,
`async_integrations` and the sync modules generated from them) build on these, so a path, a
body or a model is written once.

Request bodies are validated with the same pydantic models the API validates them with before
anything is sent; the body sent is the caller's own values, without the ones left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from crm_ledger.client.errors import NotAnchoredYet, ValidationFailed
from crm_ledger.client.receipts import Receipt
from crm_ledger.client.transport import Call
from crm_ledger.crm.schemas import FeedPagePublic
from crm_ledger.ingest.schemas import (
    ClawbackPublic,
    ClawbacksPublic,
    DeliveriesPublic,
    DeliveryPublic,
    SourceCreate,
    SourcePublic,
    SourceRotate,
    SourcesPublic,
)
from crm_ledger.journal.schemas import (
    CustomerCreate,
    InteractionBatchCreate,
    InteractionCreate,
    OrderCreate,
)
from crm_ledger.loyalty.schemas import (
    AwardCreate,
    AwardJobPublic,
    CampaignCreate,
    CampaignPublic,
    CampaignsPublic,
    LoyaltyAccountPublic,
    RedemptionCreate,
    RedemptionPublic,
)
from crm_ledger.outbound.webhooks.schemas import (
    WebhookDeliveriesPublic,
    WebhookDeliveryPublic,
    WebhookReplay,
    WebhookSecretPublic,
    WebhookSubscriptionCreate,
    WebhookSubscriptionCreated,
    WebhookSubscriptionPublic,
    WebhookSubscriptionsPublic,
    WebhookSubscriptionUpdate,
)
from crm_ledger.schemas import (
    CustomerPublic,
    CustomersPublic,
    ErasurePublic,
    RecordPublic,
    RecordsPublic,
)

__all__ = [
    "PAGE_SIZE",
    "AwardJobPublic",
    "CampaignPublic",
    "CampaignsPublic",
    "ClawbackPublic",
    "ClawbacksPublic",
    "CustomerPublic",
    "CustomersPublic",
    "DeliveriesPublic",
    "DeliveryPublic",
    "ErasurePublic",
    "FeedPagePublic",
    "LoyaltyAccountPublic",
    "RecordPublic",
    "RecordsPublic",
    "RedemptionPublic",
    "SourcePublic",
    "SourcesPublic",
    "WebhookDeliveriesPublic",
    "WebhookDeliveryPublic",
    "WebhookSecretPublic",
    "WebhookSubscriptionCreated",
    "WebhookSubscriptionPublic",
    "WebhookSubscriptionsPublic",
    "parse",
    "validated",
]

PAGE_SIZE = 100
#: A receipt is asked for again after this long when the service gives no Retry-After.
RECEIPT_POLL_SECONDS = 0.5
Model = TypeVar("Model", bound=BaseModel)


def _id(value: str) -> str:
    return quote(value, safe="")


def validated(model: type[BaseModel], body: Mapping[str, Any]) -> dict[str, Any]:
    """`body` without its None values, once `model` (the API's own) accepts it.

    Raises `ValidationFailed` with one `FieldError` per bad field, nothing sent.
    """
    cleaned = {name: value for name, value in body.items() if value is not None}
    try:
        model.model_validate(cleaned)
    except ValidationError as exc:
        errors = [
            {
                "location": "body",
                "field": ".".join(str(part) for part in error["loc"]),
                "message": error["msg"],
            }
            for error in exc.errors()
        ]
        fields = ", ".join(error["field"] for error in errors)
        raise ValidationFailed(
            {
                "title": "Invalid request (refused before sending)",
                "detail": f"the request has invalid fields: {fields}",
                "errors": errors,
            },
            status=422,
            retry_after=None,
        ) from None
    return cleaned


def parse(model: type[Model], content: bytes) -> Model:
    """The answer's JSON as `model`."""
    return model.model_validate_json(content)


# Customers -------------------------------------------------------------------------------


def create_customer(body: Mapping[str, Any], idempotency_key: str | None) -> Call:
    """POST /v1/customers."""
    return Call("POST", "/v1/customers", validated(CustomerCreate, body), {}, idempotency_key)


def get_customer(customer_id: str) -> Call:
    """GET /v1/customers/{id}."""
    return Call("GET", f"/v1/customers/{_id(customer_id)}")


def list_customers(cursor: str | None, limit: int) -> Call:
    """GET /v1/customers, one page."""
    params: dict[str, str | int] = {"limit": limit}
    if cursor is not None:
        params["cursor"] = cursor
    return Call("GET", "/v1/customers", params=params)


def erase_customer(customer_id: str, idempotency_key: str | None) -> Call:
    """DELETE /v1/customers/{id}/personal-data."""
    return Call(
        "DELETE",
        f"/v1/customers/{_id(customer_id)}/personal-data",
        idempotency_key=idempotency_key,
    )


# Records ---------------------------------------------------------------------------------


def create_interaction(body: Mapping[str, Any], idempotency_key: str | None) -> Call:
    """POST /v1/interactions."""
    return Call("POST", "/v1/interactions", validated(InteractionCreate, body), {}, idempotency_key)


def create_interactions(items: Sequence[Mapping[str, Any]], idempotency_key: str | None) -> Call:
    """POST /v1/interactions/batch."""
    body = {"items": [validated(InteractionCreate, item) for item in items]}
    return Call(
        "POST",
        "/v1/interactions/batch",
        validated(InteractionBatchCreate, body),
        {},
        idempotency_key,
    )


def create_order(body: Mapping[str, Any], idempotency_key: str | None) -> Call:
    """POST /v1/orders."""
    return Call("POST", "/v1/orders", validated(OrderCreate, body), {}, idempotency_key)


def get_record(record_id: str) -> Call:
    """GET /v1/records/{id}."""
    return Call("GET", f"/v1/records/{_id(record_id)}")


def get_receipt(record_id: str) -> Call:
    """GET /v1/records/{id}/receipt (200: the receipt, 202: not anchored yet)."""
    return Call("GET", f"/v1/records/{_id(record_id)}/receipt")


# Audit -----------------------------------------------------------------------------------


def verify(body: Mapping[str, Any]) -> Call:
    """POST /v1/audit/verify."""
    return Call("POST", "/v1/audit/verify", {k: v for k, v in body.items() if v is not None})


def audit_customer(customer_id: str) -> Call:
    """GET /v1/audit/customers/{id}."""
    return Call("GET", f"/v1/audit/customers/{_id(customer_id)}")


def start_ledger_audit() -> Call:
    """POST /v1/audit/ledger."""
    return Call("POST", "/v1/audit/ledger")


def latest_ledger_audit() -> Call:
    """GET /v1/audit/ledger."""
    return Call("GET", "/v1/audit/ledger")


def digest() -> Call:
    """GET /v1/audit/digest."""
    return Call("GET", "/v1/audit/digest")


def export(customer_id: str | None, include_keys: bool) -> Call:
    """GET /v1/audit/export."""
    params: dict[str, str | int] = {"include_keys": str(include_keys).lower()}
    if customer_id is not None:
        params["customer_id"] = customer_id
    return Call("GET", "/v1/audit/export", params=params)


# Loyalty ---------------------------------------------------------------------------------


def create_campaign(body: Mapping[str, Any], idempotency_key: str | None) -> Call:
    """POST /v1/campaigns."""
    return Call("POST", "/v1/campaigns", validated(CampaignCreate, body), {}, idempotency_key)


def get_campaign(campaign_id: str) -> Call:
    """GET /v1/campaigns/{id}."""
    return Call("GET", f"/v1/campaigns/{_id(campaign_id)}")


def list_campaigns() -> Call:
    """GET /v1/campaigns."""
    return Call("GET", "/v1/campaigns")


def change_campaign(campaign_id: str, action: str, idempotency_key: str | None = None) -> Call:
    """POST /v1/campaigns/{id}/pause|resume|close."""
    return Call(
        "POST", f"/v1/campaigns/{_id(campaign_id)}/{action}", idempotency_key=idempotency_key
    )


def award(campaign_id: str, body: Mapping[str, Any], idempotency_key: str | None) -> Call:
    """POST /v1/campaigns/{id}/awards."""
    return Call(
        "POST",
        f"/v1/campaigns/{_id(campaign_id)}/awards",
        validated(AwardCreate, body),
        {},
        idempotency_key,
    )


def get_award(campaign_id: str, job_id: str) -> Call:
    """GET /v1/campaigns/{id}/awards/{job_id}."""
    return Call("GET", f"/v1/campaigns/{_id(campaign_id)}/awards/{_id(job_id)}")


def create_redemption(body: Mapping[str, Any], idempotency_key: str | None) -> Call:
    """POST /v1/redemptions."""
    return Call("POST", "/v1/redemptions", validated(RedemptionCreate, body), {}, idempotency_key)


def get_redemption(redemption_id: str) -> Call:
    """GET /v1/redemptions/{id}."""
    return Call("GET", f"/v1/redemptions/{_id(redemption_id)}")


def loyalty_account(customer_id: str) -> Call:
    """GET /v1/customers/{id}/loyalty."""
    return Call("GET", f"/v1/customers/{_id(customer_id)}/loyalty")


# Events ----------------------------------------------------------------------------------


def events(after: str | None, types: Sequence[str] | None, limit: int) -> Call:
    """GET /v1/events, one page."""
    params: dict[str, str | int] = {"limit": limit}
    if after is not None:
        params["after"] = after
    if types:
        params["types"] = ",".join(types)
    return Call("GET", "/v1/events", params=params)


# Shops (sources) -------------------------------------------------------------------------


def _query(**values: str | int | None) -> dict[str, str | int]:
    return {name: value for name, value in values.items() if value is not None}


def create_source(body: Mapping[str, Any], idempotency_key: str | None) -> Call:
    """POST /v1/sources."""
    return Call("POST", "/v1/sources", validated(SourceCreate, body), {}, idempotency_key)


def list_sources() -> Call:
    """GET /v1/sources."""
    return Call("GET", "/v1/sources")


def get_source(source_id: str) -> Call:
    """GET /v1/sources/{id}."""
    return Call("GET", f"/v1/sources/{_id(source_id)}")


def delete_source(source_id: str) -> Call:
    """DELETE /v1/sources/{id}."""
    return Call("DELETE", f"/v1/sources/{_id(source_id)}")


def rotate_source(source_id: str, body: Mapping[str, Any], idempotency_key: str | None) -> Call:
    """POST /v1/sources/{id}/rotate."""
    return Call(
        "POST",
        f"/v1/sources/{_id(source_id)}/rotate",
        validated(SourceRotate, body),
        {},
        idempotency_key,
    )


def source_deliveries(source_id: str, status: str | None, cursor: str | None, limit: int) -> Call:
    """GET /v1/sources/{id}/deliveries, one page."""
    params = _query(status=status, cursor=cursor, limit=limit)
    return Call("GET", f"/v1/sources/{_id(source_id)}/deliveries", params=params)


def retry_source_delivery(source_id: str, delivery_id: str, idempotency_key: str | None) -> Call:
    """POST /v1/sources/{id}/deliveries/{delivery_id}/retry."""
    path = f"/v1/sources/{_id(source_id)}/deliveries/{_id(delivery_id)}/retry"
    return Call("POST", path, idempotency_key=idempotency_key)


def source_clawbacks(source_id: str) -> Call:
    """GET /v1/sources/{id}/clawbacks."""
    return Call("GET", f"/v1/sources/{_id(source_id)}/clawbacks")


# Webhook subscriptions -------------------------------------------------------------------

_SUBSCRIPTIONS = "/v1/webhook-subscriptions"


def create_subscription(body: Mapping[str, Any], idempotency_key: str | None) -> Call:
    """POST /v1/webhook-subscriptions."""
    return Call(
        "POST", _SUBSCRIPTIONS, validated(WebhookSubscriptionCreate, body), {}, idempotency_key
    )


def list_subscriptions() -> Call:
    """GET /v1/webhook-subscriptions."""
    return Call("GET", _SUBSCRIPTIONS)


def get_subscription(subscription_id: str) -> Call:
    """GET /v1/webhook-subscriptions/{id}."""
    return Call("GET", f"{_SUBSCRIPTIONS}/{_id(subscription_id)}")


def update_subscription(subscription_id: str, body: Mapping[str, Any]) -> Call:
    """PATCH /v1/webhook-subscriptions/{id} (fields left out stay as they are)."""
    return Call(
        "PATCH",
        f"{_SUBSCRIPTIONS}/{_id(subscription_id)}",
        validated(WebhookSubscriptionUpdate, body),
    )


def delete_subscription(subscription_id: str) -> Call:
    """DELETE /v1/webhook-subscriptions/{id}."""
    return Call("DELETE", f"{_SUBSCRIPTIONS}/{_id(subscription_id)}")


def subscription_action(
    subscription_id: str, action: str, idempotency_key: str | None = None
) -> Call:
    """POST /v1/webhook-subscriptions/{id}/pause|resume|rotate-secret."""
    path = f"{_SUBSCRIPTIONS}/{_id(subscription_id)}/{action}"
    return Call("POST", path, idempotency_key=idempotency_key)


def subscription_deliveries(
    subscription_id: str, status: str | None, before: str | None, limit: int
) -> Call:
    """GET /v1/webhook-subscriptions/{id}/deliveries, one page (newest first)."""
    params = _query(status=status, before=before, limit=limit)
    return Call("GET", f"{_SUBSCRIPTIONS}/{_id(subscription_id)}/deliveries", params=params)


def redeliver(subscription_id: str, delivery_id: str, idempotency_key: str | None) -> Call:
    """POST /v1/webhook-subscriptions/{id}/deliveries/{delivery_id}/redeliver."""
    path = f"{_SUBSCRIPTIONS}/{_id(subscription_id)}/deliveries/{_id(delivery_id)}/redeliver"
    return Call("POST", path, idempotency_key=idempotency_key)


def replay(subscription_id: str, after: str | None, idempotency_key: str | None) -> Call:
    """POST /v1/webhook-subscriptions/{id}/replay."""
    return Call(
        "POST",
        f"{_SUBSCRIPTIONS}/{_id(subscription_id)}/replay",
        validated(WebhookReplay, {"after": after}),
        {},
        idempotency_key,
    )


# Bodies and answers shared by the sync and async resources -------------------------------


def customer_body(
    name: str, email: str, phone: str | None, external_ref: str | None, tags: Sequence[str]
) -> dict[str, Any]:
    """The body of POST /v1/customers."""
    return {
        "name": name,
        "email": email,
        "phone": phone,
        "external_ref": external_ref,
        "tags": list(tags),
    }


def interaction_body(
    customer_id: str, type: str, channel: str, occurred_at: str, details: Mapping[str, Any]
) -> dict[str, Any]:
    """The body of POST /v1/interactions (and of each batch item)."""
    return {
        "customer_id": customer_id,
        "type": type,
        "channel": channel,
        "occurred_at": occurred_at,
        "details": dict(details),
    }


def receipt_or_wait(response: httpx.Response) -> Receipt | float:
    """The receipt, or how long to wait before asking again (202)."""
    if response.status_code == 200:
        return Receipt(response.json())
    return float(response.headers.get("Retry-After", RECEIPT_POLL_SECONDS))


def not_anchored(record_id: str, timeout: float) -> NotAnchoredYet:
    """The error `receipt` raises when the batch is not on chain (in time)."""
    return NotAnchoredYet(
        f"record {record_id} was not anchored within {timeout:g} s: its batch is not on chain "
        "yet (is the chain node up? GET /readyz shows the anchoring lag)",
        record_id=record_id,
    )
