"""`client.sources` and `client.webhook_subscriptions`, sync and async, against a live service
and Anvil: a shop's signed webhooks come in, signed webhooks go out to a receiver on 127.0.0.1,
and every method of both resources is called and checked for what the service then does."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from crm_ledger.client import AsyncClient, Client, DeliveryPublic, NotFound
from tests.client.conftest import Delivered, LiveService, WebhookReceiver
from tests.ingest.shops import body_of, shopify_headers, shopify_order
from tests.waiting import wait_for, wait_for_async

pytestmark = pytest.mark.chain

SHOP_SECRET = "shop-secret-" + "a" * 16
NEW_SHOP_SECRET = "shop-secret-" + "b" * 16


def send_to_shop_url(url: str, topic: str, document: dict[str, Any], secret: str) -> int:
    """POST a Shopify webhook signed with `secret` to a source's URL; the status."""
    body = body_of(document)
    return httpx.post(
        url, content=body, headers=shopify_headers(body, topic, secret=secret)
    ).status_code


def verified(delivered: Delivered, secret: str) -> dict[str, Any]:
    """The delivery's payload once its Standard Webhooks signature checks out under `secret`."""
    payload: dict[str, Any] = Webhook(secret).verify(delivered.body, delivered.headers)
    return payload


def record_anchored_for(receiver: WebhookReceiver, path: str, record_id: str) -> list[Delivered]:
    """What `path` received about `record_id`."""
    return [
        item
        for item in receiver.on(path)
        if json.loads(item.body)["data"]["data"].get("record_id") == record_id
    ]


def test_a_shop_is_connected_rotated_retried_and_deleted(live: LiveService) -> None:
    with Client(live.url, api_key=live.keys["admin"], max_retries=2, backoff=0.05) as admin:
        shop = admin.sources.create(platform="shopify", name="Lovelace Prints", secret=SHOP_SECRET)
        assert (shop.platform, shop.has_secret, shop.deleted_at) == ("shopify", True, None)
        assert shop.webhook_url.startswith(live.url) and shop.id in shop.webhook_url
        assert admin.sources.get(shop.id) == shop
        assert shop.id in [source.id for source in admin.sources.list()]

        # Two deliveries the mapper cannot use (an unknown topic) fail, and are listed.
        for _ in range(2):
            assert (
                send_to_shop_url(shop.webhook_url, "products/create", {"id": 1}, SHOP_SECRET) == 200
            )

        def failed() -> list[DeliveryPublic]:
            found = list(admin.sources.deliveries(shop.id, status="failed", page_size=1))
            return found if len(found) == 2 else []

        first, second = wait_for(failed, what="two failed deliveries")
        assert first.topic == "products/create" and first.error
        assert first.delivery_id != second.delivery_id  # newest first, one page each
        again = admin.sources.retry_delivery(shop.id, first.id)
        assert (again.id, again.status, again.error) == (first.id, "pending", None)

        rotated = admin.sources.rotate(shop.id, secret=NEW_SHOP_SECRET)
        assert rotated.rotated_at is not None and rotated.previous_secret_valid_until is not None
        order = shopify_order()
        assert send_to_shop_url(shop.webhook_url, "orders/create", order, NEW_SHOP_SECRET) == 200
        assert send_to_shop_url(shop.webhook_url, "orders/create", order, "wrong-secret-1") == 401
        assert admin.sources.clawbacks(shop.id) == []

        deleted = admin.sources.delete(shop.id)
        assert deleted.deleted_at is not None
        assert send_to_shop_url(shop.webhook_url, "orders/create", order, NEW_SHOP_SECRET) == 404
        with pytest.raises(NotFound):
            admin.sources.get(str(uuid.uuid4()))


def test_a_webhook_subscription_delivers_signed_events_and_is_managed(
    live: LiveService, webhook_receiver: WebhookReceiver
) -> None:
    path = f"/hooks/{uuid.uuid4().hex}"
    with Client(live.url, api_key=live.keys["admin"], max_retries=2, backoff=0.05) as admin:
        created = admin.webhook_subscriptions.create(
            url=webhook_receiver.base_url + path,
            event_types=["record.anchored"],
            description="CRM timeline",
        )
        assert created.secret is not None and created.secret.startswith("whsec_")
        assert (created.status, created.event_types) == ("active", ["record.anchored"])
        assert admin.webhook_subscriptions.get(created.id).description == "CRM timeline"
        assert created.id in [s.id for s in admin.webhook_subscriptions.list()]

        who = admin.customers.create(name="Hook", email="hook@example.com")
        record = admin.interactions.create(
            customer_id=who.id, type="call", channel="phone", occurred_at="2026-11-25T10:00:00Z"
        )
        [first] = wait_for(
            lambda: record_anchored_for(webhook_receiver, path, record.id), what="hook"
        )
        payload = verified(first, created.secret)
        assert payload["type"] == "record.anchored"

        # Other records anchored meanwhile have deliveries too: this record's is found by id.
        [delivery] = wait_for(
            lambda: [
                item
                for item in admin.webhook_subscriptions.deliveries(created.id, status="succeeded")
                if item.event_id == first.headers["webhook-id"]
            ],
            what="a succeeded delivery",
        )
        again = admin.webhook_subscriptions.redeliver(created.id, delivery.id)
        assert again.event_id == delivery.event_id and again.status == "pending"
        wait_for(
            lambda: len(record_anchored_for(webhook_receiver, path, record.id)) == 2, what="again"
        )

        changed = admin.webhook_subscriptions.update(
            created.id, description="timeline", event_types=["record.anchored", "reward.issued"]
        )
        assert (changed.description, changed.event_types) == (
            "timeline",
            ["record.anchored", "reward.issued"],
        )
        assert admin.webhook_subscriptions.pause(created.id).status == "paused"
        assert admin.webhook_subscriptions.resume(created.id).status == "active"

        rotated = admin.webhook_subscriptions.rotate_secret(created.id)
        assert rotated.secret is not None and rotated.secret != created.secret
        replayed = admin.webhook_subscriptions.replay(created.id)
        assert replayed.id == created.id
        resent = wait_for(
            lambda: record_anchored_for(webhook_receiver, path, record.id)[2:], what="the replay"
        )
        assert verified(resent[0], rotated.secret)["data"]["data"]["record_id"] == record.id

        admin.webhook_subscriptions.delete(created.id)
        with pytest.raises(NotFound):
            admin.webhook_subscriptions.get(created.id)


def test_a_lost_create_answer_still_hands_the_caller_a_working_secret(
    live: LiveService, webhook_receiver: WebhookReceiver
) -> None:
    path = f"/hooks/{uuid.uuid4().hex}"
    key = str(uuid.uuid4())
    with Client(live.url, api_key=live.keys["admin"], max_retries=2, backoff=0.05) as admin:
        url = webhook_receiver.base_url + path
        first = admin.webhook_subscriptions.create(
            url=url, event_types=["record.anchored"], idempotency_key=key
        )
        # The same key again: what a retry after a lost answer sends; the service replays
        # `secret: null`, and the client rotates to hand back a secret that signs.
        second = admin.webhook_subscriptions.create(
            url=url, event_types=["record.anchored"], idempotency_key=key
        )
        assert second.id == first.id and second.secret not in (None, first.secret)
        assert second.secret is not None
        admin.webhook_subscriptions.replay(first.id)
        delivered = wait_for(lambda: webhook_receiver.on(path), what="a replayed delivery")
        assert verified(delivered[0], second.secret)["type"] == "record.anchored"
        admin.webhook_subscriptions.delete(first.id)


def test_the_async_client_has_both_resources(
    live: LiveService, webhook_receiver: WebhookReceiver
) -> None:
    path = f"/hooks/{uuid.uuid4().hex}"

    async def scenario() -> None:
        async with AsyncClient(live.url, api_key=live.keys["admin"], max_retries=2) as admin:
            shop = await admin.sources.create(
                platform="shopify", name="Hopper Books", secret=SHOP_SECRET
            )
            assert await admin.sources.get(shop.id) == shop
            assert shop.id in [s.id for s in await admin.sources.list()]
            status = await asyncio.to_thread(
                send_to_shop_url, shop.webhook_url, "products/create", {"id": 1}, SHOP_SECRET
            )
            assert status == 200

            async def failed() -> list[DeliveryPublic]:
                return [d async for d in admin.sources.deliveries(shop.id, status="failed")]

            [bad] = await wait_for_async(failed, what="a failed delivery", interval=0.1)
            assert (await admin.sources.retry_delivery(shop.id, bad.id)).status == "pending"
            rotated = await admin.sources.rotate(shop.id, secret=NEW_SHOP_SECRET)
            assert rotated.previous_secret_valid_until is not None
            assert await admin.sources.clawbacks(shop.id) == []
            with pytest.raises(NotFound):
                await admin.sources.retry_delivery(shop.id, str(uuid.uuid4()))
            assert (await admin.sources.delete(shop.id)).deleted_at is not None

            hooks = admin.webhook_subscriptions
            created = await hooks.create(
                url=webhook_receiver.base_url + path, event_types=["record.anchored"]
            )
            assert created.secret is not None
            assert (await hooks.get(created.id)).url == webhook_receiver.base_url + path
            assert created.id in [s.id for s in await hooks.list()]
            assert (await hooks.update(created.id, description="async")).description == "async"
            assert (await hooks.pause(created.id)).status == "paused"
            assert (await hooks.resume(created.id)).status == "active"
            secret = (await hooks.rotate_secret(created.id)).secret
            assert secret is not None and secret != created.secret
            who = await admin.customers.create(name="Async hook", email="ahook@example.com")
            record = await admin.interactions.create(
                customer_id=who.id, type="call", channel="phone", occurred_at="2026-11-25T10:00:00Z"
            )
            await admin.records.receipt(record.id, wait=True)
            await hooks.replay(created.id, after=None)

            async def succeeded() -> list[Any]:
                return [d async for d in hooks.deliveries(created.id, status="succeeded")]

            delivered = await wait_for_async(succeeded, what="replayed deliveries", interval=0.1)
            again = await hooks.redeliver(created.id, delivered[0].id)
            assert again.event_id == delivered[0].event_id
            by_id = {item.headers["webhook-id"]: item for item in webhook_receiver.on(path)}
            assert verified(by_id[again.event_id], secret)["type"] == "record.anchored"
            await hooks.delete(created.id)
            with pytest.raises(NotFound):
                await hooks.get(created.id)

    asyncio.run(scenario())
