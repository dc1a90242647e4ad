"""The integrations' resources: `client.sources` (shops that send webhooks in) and
`client.webhook_subscriptions` (signed webhooks out). Both need an admin key.

Exports: `Sources`, `WebhookSubscriptions`: named `Async...` in `async_integrations` (for
`AsyncClient`) and without the prefix in `integrations` (for `Client`), which
`scripts/unasync_client.py` generates from the async module (see `async_resources`).

A webhook subscription's signing secret is shown once, in the answer that creates it (or rotates
it); an Idempotency-Key replay answers `secret: null`. When a create's answer is lost and the
retry (same key) gets that replay, `create` rotates the secret at once, so the caller always
receives a secret that signs from now on; the lost one expires with the rotation's grace period.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Sequence

from crm_ledger.client import calls
from crm_ledger.client.async_resources import AsyncResource
from crm_ledger.client.calls import (
    ClawbackPublic,
    ClawbacksPublic,
    DeliveriesPublic,
    DeliveryPublic,
    SourcePublic,
    SourcesPublic,
    WebhookDeliveriesPublic,
    WebhookDeliveryPublic,
    WebhookSecretPublic,
    WebhookSubscriptionCreated,
    WebhookSubscriptionPublic,
    WebhookSubscriptionsPublic,
)

#: The most deliveries the service answers per page (sources, subscriptions).
SOURCE_DELIVERY_PAGE = 200
SUBSCRIPTION_DELIVERY_PAGE = 500


class AsyncSources(AsyncResource):
    """`client.sources`: add a shop, list, get, rotate its secret, delete; its deliveries."""

    async def create(
        self,
        *,
        platform: str,
        name: str,
        secret: str | None = None,
        public_key: str | None = None,
        idempotency_key: str | None = None,
    ) -> SourcePublic:
        """Add a shop (`shopify`, `woocommerce` or `magento`) with the secret it signs with
        (Magento: or its `public_key`, PEM). Paste the answer's `webhook_url` in the shop."""
        body = {"platform": platform, "name": name, "secret": secret, "public_key": public_key}
        return await self._parsed(SourcePublic, calls.create_source(body, idempotency_key))

    async def list(self) -> list[SourcePublic]:
        """Every shop, deleted ones included, oldest first."""
        found = await self._parsed(SourcesPublic, calls.list_sources())
        return found.items

    async def get(self, source_id: str) -> SourcePublic:
        """One shop (never its secret: `has_secret` says whether it has one)."""
        return await self._parsed(SourcePublic, calls.get_source(source_id))

    async def rotate(
        self,
        source_id: str,
        *,
        secret: str | None = None,
        public_key: str | None = None,
        idempotency_key: str | None = None,
    ) -> SourcePublic:
        """Replace the shop's secret (or Magento public key); the old one keeps verifying
        until `previous_secret_valid_until`."""
        body = {"secret": secret, "public_key": public_key}
        return await self._parsed(
            SourcePublic, calls.rotate_source(source_id, body, idempotency_key)
        )

    async def delete(self, source_id: str) -> SourcePublic:
        """Refuse the shop's webhooks from now on (404); what it delivered stays."""
        return await self._parsed(SourcePublic, calls.delete_source(source_id))

    async def deliveries(
        self, source_id: str, *, status: str | None = None, page_size: int = 50
    ) -> AsyncIterator[DeliveryPublic]:
        """The shop's webhook deliveries newest first (`status`: e.g. "failed"), page by page."""
        cursor: str | None = None
        limit = min(page_size, SOURCE_DELIVERY_PAGE)
        while True:
            call = calls.source_deliveries(source_id, status, cursor, limit)
            page = await self._parsed(DeliveriesPublic, call)
            for item in page.items:
                yield item
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def retry_delivery(
        self, source_id: str, delivery_id: str, *, idempotency_key: str | None = None
    ) -> DeliveryPublic:
        """Map a failed delivery again (it goes back to `pending`)."""
        call = calls.retry_source_delivery(source_id, delivery_id, idempotency_key)
        return await self._parsed(DeliveryPublic, call)

    async def clawbacks(self, source_id: str) -> builtins.list[ClawbackPublic]:
        """Loyalty points taken back for the shop's refunded or cancelled orders."""
        found = await self._parsed(ClawbacksPublic, calls.source_clawbacks(source_id))
        return found.items


class AsyncWebhookSubscriptions(AsyncResource):
    """`client.webhook_subscriptions`: subscribe a URL to events, manage it, follow and replay
    its deliveries."""

    async def create(
        self,
        *,
        url: str,
        event_types: Sequence[str],
        description: str = "",
        idempotency_key: str | None = None,
    ) -> WebhookSubscriptionCreated:
        """Deliver events of `event_types` appended from now on to `url`, signed as Standard
        Webhooks with the answer's `secret` (shown this once: store it)."""
        body = {"url": url, "event_types": list(event_types), "description": description}
        call = calls.create_subscription(body, idempotency_key)
        created = await self._parsed(WebhookSubscriptionCreated, call)
        if created.secret is None:
            # A replay of an earlier attempt whose answer (and secret) was lost.
            rotated = await self.rotate_secret(created.id)
            created = created.model_copy(update={"secret": rotated.secret})
        return created

    async def list(self) -> list[WebhookSubscriptionPublic]:
        """Every subscription, oldest first."""
        found = await self._parsed(WebhookSubscriptionsPublic, calls.list_subscriptions())
        return found.items

    async def get(self, subscription_id: str) -> WebhookSubscriptionPublic:
        """One subscription: status, failures, cursor."""
        return await self._parsed(
            WebhookSubscriptionPublic, calls.get_subscription(subscription_id)
        )

    async def update(
        self,
        subscription_id: str,
        *,
        url: str | None = None,
        event_types: Sequence[str] | None = None,
        description: str | None = None,
    ) -> WebhookSubscriptionPublic:
        """Change the URL, event types or description; what is left out stays."""
        body = {
            "url": url,
            "event_types": list(event_types) if event_types is not None else None,
            "description": description,
        }
        call = calls.update_subscription(subscription_id, body)
        return await self._parsed(WebhookSubscriptionPublic, call)

    async def pause(self, subscription_id: str) -> WebhookSubscriptionPublic:
        """Stop deliveries; events keep waiting in the feed."""
        call = calls.subscription_action(subscription_id, "pause")
        return await self._parsed(WebhookSubscriptionPublic, call)

    async def resume(self, subscription_id: str) -> WebhookSubscriptionPublic:
        """Deliver again, what waited included; the failure count starts from zero."""
        call = calls.subscription_action(subscription_id, "resume")
        return await self._parsed(WebhookSubscriptionPublic, call)

    async def rotate_secret(
        self, subscription_id: str, *, idempotency_key: str | None = None
    ) -> WebhookSecretPublic:
        """A new signing secret, shown this once; the old one signs too for 24 hours."""
        call = calls.subscription_action(subscription_id, "rotate-secret", idempotency_key)
        return await self._parsed(WebhookSecretPublic, call)

    async def delete(self, subscription_id: str) -> None:
        """Delete the subscription and its delivery log; nothing more is delivered to it."""
        await self._send(calls.delete_subscription(subscription_id))

    async def deliveries(
        self, subscription_id: str, *, status: str | None = None, page_size: int = 100
    ) -> AsyncIterator[WebhookDeliveryPublic]:
        """The delivery log newest first (`status`: pending, succeeded, failed), page by page."""
        before: str | None = None
        limit = min(page_size, SUBSCRIPTION_DELIVERY_PAGE)
        while True:
            call = calls.subscription_deliveries(subscription_id, status, before, limit)
            page = await self._parsed(WebhookDeliveriesPublic, call)
            for item in page.items:
                yield item
            if page.next_before is None:
                return
            before = page.next_before

    async def redeliver(
        self, subscription_id: str, delivery_id: str, *, idempotency_key: str | None = None
    ) -> WebhookDeliveryPublic:
        """Deliver one delivery's event again now (a new delivery, same `webhook-id`)."""
        call = calls.redeliver(subscription_id, delivery_id, idempotency_key)
        return await self._parsed(WebhookDeliveryPublic, call)

    async def replay(
        self,
        subscription_id: str,
        *,
        after: str | None = None,
        idempotency_key: str | None = None,
    ) -> WebhookSubscriptionPublic:
        """Deliver again every event of its types after the feed cursor `after` (None: from
        the oldest the feed keeps)."""
        call = calls.replay(subscription_id, after, idempotency_key)
        return await self._parsed(WebhookSubscriptionPublic, call)
