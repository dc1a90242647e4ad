"""The whole service on a real Anvil: a signed Shopify order is anchored and earns points on
chain; a refund and a cancellation burn them back, capped at what the customer still holds."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from crm_ledger.app import create_app
from crm_ledger.chain.node import LocalNode, start_anvil
from crm_ledger.config import Settings
from crm_ledger.journal.keys import Role, create_api_key
from tests.apps import TestClient
from tests.chain.conftest import free_port
from tests.ingest.conftest import TEST_MASTER_KEY
from tests.ingest.helpers import send_shopify
from tests.ingest.shops import SHOPIFY_SECRET, shopify_order, shopify_refund
from tests.waiting import wait_for

pytestmark = pytest.mark.chain


@pytest.fixture(scope="module")
def anvil(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNode]:
    with start_anvil(
        port=free_port(), state_path=tmp_path_factory.mktemp("anvil") / "s.json"
    ) as node:
        yield node


def test_order_webhook_earns_on_chain_and_refund_and_cancellation_burn_it_back(
    anvil: LocalNode, tmp_path: Path, database_url: str
) -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path,
        database_url=database_url,
        rpc_url=anvil.rpc_url,
        batch_max_age_seconds=0.01,
        master_key=TEST_MASTER_KEY,
    )
    app = create_app(settings)
    with TestClient(app) as client:
        with app.state.runtime.session_factory.begin() as session:
            client.headers["Authorization"] = "Bearer " + create_api_key(session, role=Role.ADMIN)
        campaign = client.post(
            "/v1/campaigns",
            json={
                "name": "Shop orders",
                "budget": 100_000,
                "rules": [{"type": "order_total", "points_per_unit": "2"}],
            },
        )
        assert campaign.status_code == 201, campaign.text
        source = client.post(
            "/v1/sources",
            json={"platform": "shopify", "name": "Lovelace Prints", "secret": SHOPIFY_SECRET},
        ).json()
        send_shopify(client, source, "orders/create", shopify_order())
        # orders/paid and an update follow: the order still earns once.
        send_shopify(client, source, "orders/paid", shopify_order())
        send_shopify(
            client,
            source,
            "orders/updated",
            shopify_order(fulfillment_status="fulfilled", updated_at="2026-11-25T11:00:00-05:00"),
        )

        def delivery_records() -> list[str]:
            listed = client.get(f"/v1/sources/{source['id']}/deliveries").json()["items"]
            return [rid for item in reversed(listed) for rid in item["record_ids"]]

        record_ids = wait_for(delivery_records, 120, until=lambda ids: len(ids) == 2)
        receipt = wait_for(
            lambda: client.get(f"/v1/records/{record_ids[0]}/receipt"),
            120,
            until=lambda r: r.status_code == 200,
            what=lambda: f"the receipt; chain: {app.state.runtime.chain_status}",
        )
        assert receipt.json()["chain"]["tx_hash"]
        customer = client.get(f"/v1/records/{record_ids[0]}").json()["customer_id"]

        def account() -> dict[str, Any]:
            found: dict[str, Any] = client.get(f"/v1/customers/{customer}/loyalty").json()
            return found

        def settled(points: int) -> Callable[[dict[str, Any]], bool]:
            return lambda a: a.get("chain_balance") == a.get("available") == points

        # 199.00 EUR x 2 points.
        wait_for(account, 120, until=settled(398))

        # Half the order refunded: half the points burnt.
        send_shopify(client, source, "refunds/create", shopify_refund("99.50"))
        wait_for(account, 120, until=settled(199))

        # The customer spends 150 of the 199, then the order is cancelled: 199 more are owed,
        # 49 are left to burn, 150 are the shortfall.
        redeemed = client.post(
            "/v1/redemptions",
            json={"customer_id": customer, "points": 150, "reward_ref": "mug"},
        )
        assert redeemed.status_code == 201, redeemed.text
        wait_for(account, 120, until=settled(49))
        cancelled = shopify_order(
            cancelled_at="2026-11-27T09:00:00-05:00",
            financial_status="partially_refunded",
            updated_at="2026-11-27T09:00:00-05:00",
        )
        send_shopify(client, source, "orders/cancelled", cancelled)
        wait_for(account, 120, until=settled(0))
        clawbacks = client.get(f"/v1/sources/{source['id']}/clawbacks").json()["items"]
        assert [
            (c["requested_points"], c["burned_points"], c["shortfall_points"]) for c in clawbacks
        ] == [(199, 49, 150), (199, 199, 0)]
        assert all(c["redemption_id"] for c in clawbacks)
