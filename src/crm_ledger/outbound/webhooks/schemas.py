"""Request and response shapes of `/v1/webhook-subscriptions`.

Exports: `WebhookSubscriptionCreate`, `WebhookSubscriptionUpdate`, `WebhookReplay`,
`WebhookSubscriptionPublic`, `WebhookSubscriptionCreated`, `WebhookSubscriptionsPublic`,
`WebhookSecretPublic`, `WebhookDeliveryPublic`, `WebhookDeliveriesPublic`, `EVENT_TYPES`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from crm_ledger.feed import EventType

EVENT_TYPES = tuple(t.value for t in EventType)


def _known_types(types: list[str]) -> list[str]:
    unknown = [t for t in types if t not in EVENT_TYPES]
    if unknown:
        raise ValueError(f"unknown event type {unknown[0]!r}; types are {', '.join(EVENT_TYPES)}")
    return list(dict.fromkeys(types))


EventTypes = Annotated[
    list[str],
    Field(
        min_length=1,
        max_length=len(EVENT_TYPES),
        description="event types to receive: " + ", ".join(EVENT_TYPES),
    ),
    AfterValidator(_known_types),
]
Url = Annotated[
    str, Field(min_length=8, max_length=2048, description="http(s) URL on a public address")
]
Description = Annotated[str, Field(max_length=500)]


class WebhookSubscriptionCreate(BaseModel):
    """A new subscription: events of `event_types` from now on are delivered to `url`."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "examples": [
                {
                    "url": "https://crm.example.com/hooks/ledger",
                    "event_types": ["record.anchored"],
                    "description": "CRM timeline",
                }
            ]
        },
    )

    url: Url
    event_types: EventTypes
    description: Description = ""


class WebhookSubscriptionUpdate(BaseModel):
    """Fields to change; those left out stay as they are."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={"examples": [{"event_types": ["record.anchored", "reward.issued"]}]},
    )

    url: Url | None = None
    event_types: EventTypes | None = None
    description: Description | None = None


class WebhookReplay(BaseModel):
    """Deliver again every event (of the subscription's types) after this feed cursor."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, json_schema_extra={"examples": [{"after": None}]}
    )

    after: str | None = Field(
        default=None,
        max_length=64,
        description="a change-feed cursor (an event's `cursor` from GET /v1/events or a "
        "delivery); null replays from the oldest event the feed retains",
    )


class WebhookSubscriptionPublic(BaseModel):
    """A subscription (its secret is never shown again after creation or rotation)."""

    id: str
    url: str
    event_types: list[str]
    description: str
    status: Literal["active", "paused"]
    paused_reason: str | None
    consecutive_failures: int
    cursor: str = Field(description="feed cursor up to which events became deliveries")
    created_at: str
    updated_at: str


class WebhookSubscriptionCreated(WebhookSubscriptionPublic):
    """The new subscription and its signing secret, shown this once."""

    secret: str | None = Field(
        description="Standard Webhooks signing secret (whsec_...); null when this answer is "
        "an Idempotency-Key replay: the secret is shown once"
    )


class WebhookSubscriptionsPublic(BaseModel):
    """Every subscription, oldest first."""

    items: list[WebhookSubscriptionPublic]


class WebhookSecretPublic(BaseModel):
    """The new signing secret, shown this once; the previous one keeps signing too until
    `previous_secret_expires_at`, so receivers can switch without dropping deliveries."""

    secret: str | None = Field(description="null on an Idempotency-Key replay")
    previous_secret_expires_at: str


class WebhookDeliveryPublic(BaseModel):
    """One event for one subscription and how its attempts went."""

    id: str
    event_id: str = Field(description="the `webhook-id` header: deduplicate on it")
    event_type: str
    event_cursor: str | None
    status: Literal["pending", "succeeded", "failed"]
    attempts: int
    last_response_code: int | None
    last_error: str | None
    last_attempt_at: str | None
    next_attempt_at: str | None
    created_at: str


class WebhookDeliveriesPublic(BaseModel):
    """Deliveries, newest first; pass `next_before` as `before` for older ones."""

    items: list[WebhookDeliveryPublic]
    next_before: str | None
