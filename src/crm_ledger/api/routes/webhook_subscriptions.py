"""/v1/webhook-subscriptions: signed webhooks to any public URL (admin keys).

Create answers the id and the signing secret, shown this once (an Idempotency-Key replay
answers `secret: null`: the secret is never stored where a replay could read it). The
`webhooks` worker (`outbound.webhooks.dispatcher`) delivers; this API manages subscriptions,
shows the delivery log, redelivers one delivery and replays from a feed cursor.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy.orm import Session
from starlette.responses import Response

from crm_ledger.api.deps import AdminKey, SessionDep, SettingsDep, problem_responses
from crm_ledger.api.idempotency import REPLAY_HEADER, NoBody, json_response
from crm_ledger.api.routes import add_actions
from crm_ledger.api.transaction import read_only, transaction
from crm_ledger.api.writes import AdminWrites
from crm_ledger.journal.schemas import format_timestamp
from crm_ledger.outbound.webhooks import subscriptions as service
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
from crm_ledger.outbound.webhooks.secrets import new_signing_secret
from crm_ledger.outbound.webhooks.subscriptions import DeliveryStatus, SubscriptionStatus
from crm_ledger.outbound.webhooks.urls import check_public

router = APIRouter(tags=["webhooks"])

_PREFIX = "/v1/webhook-subscriptions"
_ERRORS = problem_responses(401, 403, 404, 409, 410, 413, 422, 429)


def _with_secret(response: Response, secret: str) -> Response:
    """The first answer carries the secret; a replay keeps the stored `null`."""
    if response.headers.get(REPLAY_HEADER) == "true":
        return response
    body = json.loads(bytes(response.body))
    body["secret"] = secret
    return json_response(json.dumps(body, separators=(",", ":")), response.status_code)


@router.post(
    _PREFIX,
    status_code=201,
    response_model=WebhookSubscriptionCreated,
    responses=_ERRORS,
    summary="Subscribe a URL to events (admin); the signing secret is shown once",
)
def create_subscription(
    payload: WebhookSubscriptionCreate, settings: SettingsDep, writes: AdminWrites
) -> Response:
    """Events of `event_types` appended from now on are delivered to `url` (replay for older
    ones). The URL must resolve to public addresses only."""
    check_public(payload.url, allow_private=settings.webhook_allow_private_urls)
    secret = new_signing_secret()

    def write(tx: Session) -> str:
        created = service.create_subscription(session=tx, payload=payload, secret=secret)
        public = service.subscription_public(created)
        return WebhookSubscriptionCreated(**public.model_dump(), secret=None).model_dump_json()

    return _with_secret(writes.run_sync(payload, write, status_code=201), secret)


@router.get(
    _PREFIX,
    response_model=WebhookSubscriptionsPublic,
    responses=_ERRORS,
    summary="List webhook subscriptions (admin)",
)
def list_subscriptions(session: SessionDep, key: AdminKey) -> Response:
    """Every subscription, oldest first (secrets are never shown)."""
    with read_only(session):
        found = service.list_subscriptions(session=session)
        return json_response(
            WebhookSubscriptionsPublic(items=[service.subscription_public(s) for s in found])
        )


@router.get(
    _PREFIX + "/{subscription_id}",
    response_model=WebhookSubscriptionPublic,
    responses=_ERRORS,
    summary="Fetch a webhook subscription (admin)",
)
def get_subscription(subscription_id: str, session: SessionDep, key: AdminKey) -> Response:
    """One subscription."""
    with read_only(session):
        found = service.get_subscription(session=session, subscription_id=subscription_id)
        return json_response(service.subscription_public(found))


@router.patch(
    _PREFIX + "/{subscription_id}",
    response_model=WebhookSubscriptionPublic,
    responses=_ERRORS,
    summary="Change a webhook subscription's URL, event types or description (admin)",
)
def update_subscription(
    subscription_id: str,
    payload: WebhookSubscriptionUpdate,
    session: SessionDep,
    settings: SettingsDep,
    key: AdminKey,
) -> Response:
    """Fields left out stay as they are; a new URL is checked like a new subscription's."""
    if payload.url is not None:
        check_public(payload.url, allow_private=settings.webhook_allow_private_urls)
    with transaction(session):
        updated = service.update_subscription(
            session=session, subscription_id=subscription_id, payload=payload
        )
        return json_response(service.subscription_public(updated))


@router.delete(
    _PREFIX + "/{subscription_id}",
    status_code=204,
    response_class=Response,
    responses={204: {"description": "deleted, with its delivery log"}, **_ERRORS},
    summary="Delete a webhook subscription and its delivery log (admin)",
)
def delete_subscription(subscription_id: str, session: SessionDep, key: AdminKey) -> Response:
    """Nothing more is delivered to it."""
    with transaction(session):
        service.delete_subscription(session=session, subscription_id=subscription_id)
    return Response(status_code=204)


def _status_change(status: SubscriptionStatus, doc: str) -> Any:
    def change(subscription_id: str, writes: AdminWrites) -> Response:
        def write(tx: Session) -> str:
            changed = service.set_status(
                session=tx,
                subscription_id=subscription_id,
                status=status,
                reason="paused through the API" if status is SubscriptionStatus.PAUSED else None,
            )
            return service.subscription_public(changed).model_dump_json()

        return writes.run_sync(NoBody(), write)

    change.__doc__ = doc
    return change


add_actions(
    router,
    _PREFIX + "/{subscription_id}",
    {
        "pause": _status_change(
            SubscriptionStatus.PAUSED, "Stop deliveries; events keep waiting in the feed."
        ),
        "resume": _status_change(
            SubscriptionStatus.ACTIVE,
            "Deliver again: what waited is delivered, the failure count starts from zero.",
        ),
    },
    noun="webhook subscription",
    roles="admin",
    response_model=WebhookSubscriptionPublic,
    responses=_ERRORS,
)


@router.post(
    _PREFIX + "/{subscription_id}/rotate-secret",
    response_model=WebhookSecretPublic,
    responses=_ERRORS,
    summary="Replace the signing secret (admin); the new one is shown once",
)
def rotate_secret(subscription_id: str, writes: AdminWrites) -> Response:
    """Deliveries are signed with both secrets for 24 hours, then with the new one only."""
    secret = new_signing_secret()

    def write(tx: Session) -> str:
        rotated = service.rotate_secret(session=tx, subscription_id=subscription_id, secret=secret)
        assert rotated.previous_secret_expires_at is not None
        return WebhookSecretPublic(
            secret=None,
            previous_secret_expires_at=format_timestamp(rotated.previous_secret_expires_at),
        ).model_dump_json()

    return _with_secret(writes.run_sync(NoBody(), write), secret)


@router.get(
    _PREFIX + "/{subscription_id}/deliveries",
    response_model=WebhookDeliveriesPublic,
    responses=_ERRORS,
    summary="A subscription's delivery log, newest first (admin)",
)
def list_deliveries(
    subscription_id: str,
    session: SessionDep,
    key: AdminKey,
    status: DeliveryStatus | None = None,
    before: Annotated[
        str | None, Query(max_length=36, description="`next_before` of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> Response:
    """Status, response code, attempts and next try of each delivery."""
    with read_only(session):
        rows, next_before = service.list_deliveries(
            session=session,
            subscription_id=subscription_id,
            before=before,
            status=status,
            limit=limit,
        )
        return json_response(
            WebhookDeliveriesPublic(
                items=[service.delivery_public(row) for row in rows], next_before=next_before
            )
        )


@router.post(
    _PREFIX + "/{subscription_id}/deliveries/{delivery_id}/redeliver",
    status_code=202,
    response_model=WebhookDeliveryPublic,
    responses=_ERRORS,
    summary="Deliver one delivery's event again, now (admin)",
)
def redeliver(
    subscription_id: str,
    delivery_id: str,
    writes: AdminWrites,
) -> Response:
    """A new delivery of the same message (same `webhook-id`), due at once."""

    def write(tx: Session) -> str:
        again = service.redeliver(
            session=tx, subscription_id=subscription_id, delivery_id=delivery_id
        )
        return service.delivery_public(again).model_dump_json()

    return writes.run_sync(NoBody(), write, status_code=202)


@router.post(
    _PREFIX + "/{subscription_id}/replay",
    status_code=202,
    response_model=WebhookSubscriptionPublic,
    responses=_ERRORS,
    summary="Deliver again every event after a change-feed cursor (admin)",
)
def replay(
    subscription_id: str,
    payload: WebhookReplay,
    writes: AdminWrites,
) -> Response:
    """The subscription's cursor goes back to `after`; events of its types after it are
    delivered again (each with its own `webhook-id`, as the first time)."""

    def write(tx: Session) -> str:
        moved = service.replay(session=tx, subscription_id=subscription_id, after=payload.after)
        return service.subscription_public(moved).model_dump_json()

    return writes.run_sync(payload, write, status_code=202)
