"""Finding 4 in the 360 view: a redemption's free-text reward_ref does not survive erasure."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.journal.keys import Role
from tests.apps import TestClient
from tests.crm import factories as f


def test_the_reward_ref_leaves_the_360_view_with_the_erasure(
    client: TestClient,
    headers: dict[Role, dict[str, str]],
    app_sessions: sessionmaker[Session],
) -> None:
    f.deployments(app_sessions)
    pk, customer, _ = f.customer_with_records(app_sessions, 0)
    f.wallet(app_sessions, pk, "0x" + "ab" * 20)
    redeemed, _ = f.redemption(app_sessions, customer_pk=pk, address="0x" + "ab" * 20, points=3)

    def redemption_details() -> dict[str, object]:
        view = client.get(f"/v1/crm/customers/{customer}", headers=headers[Role.ADMIN]).json()
        (item,) = [i for i in view["timeline"]["items"] if i["kind"] == "redemption"]
        assert item["id"] == redeemed
        details: dict[str, object] = item["details"]
        return details

    assert redemption_details()["reward_ref"] == "mug"
    erased = client.delete(f"/v1/customers/{customer}/personal-data", headers=headers[Role.ADMIN])
    assert erased.status_code == 200, erased.text
    assert redemption_details()["reward_ref"] == ""
    got = client.get(f"/v1/redemptions/{redeemed}", headers=headers[Role.ADMIN])
    assert got.status_code == 200 and got.json()["reward_ref"] == ""
