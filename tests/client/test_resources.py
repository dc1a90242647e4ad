"""The client against a live service (a `crm-ledger serve` process) and Anvil, for every
resource, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json

import pytest

from crm_ledger.client import (
    AsyncClient,
    Client,
    Forbidden,
    NotFound,
    Unauthorized,
    ValidationFailed,
)
from crm_ledger.verifier.bundle import parse_header
from tests.client.conftest import LiveService
from tests.waiting import wait_for_async

pytestmark = pytest.mark.chain


def client(live: LiveService, role: str = "admin") -> Client:
    """A client of the live service with a key of `role`."""
    return Client(live.url, api_key=live.keys[role], max_retries=2, backoff=0.05)


def test_recorder_creates_records_and_verifies_the_receipt_on_chain_alone(
    live: LiveService,
) -> None:
    with client(live, "recorder") as recorder:
        ada = recorder.customers.create(name="Ada Lovelace", email="ada@example.com", tags=["vip"])
        assert recorder.customers.get(ada.id) == ada
        call = recorder.interactions.create(
            customer_id=ada.id,
            type="support_call",
            channel="phone",
            occurred_at="2026-11-25T10:00:00Z",
            details={"topic": "billing"},
        )
        order = recorder.orders.create(
            customer_id=ada.id,
            order_number="SO-1",
            lines=[{"sku": "TEA", "quantity": 2, "unit_price": "10.50"}],
            total="21.00",
            currency="EUR",
            status="paid",
        )
        many = recorder.interactions.create_many(
            [
                {
                    "customer_id": ada.id,
                    "type": "email",
                    "channel": "web",
                    "occurred_at": "2026-11-26T10:00:00Z",
                },
                {
                    "customer_id": ada.id,
                    "type": "visit",
                    "channel": "shop",
                    "occurred_at": "2026-11-27T10:00:00Z",
                },
            ]
        )
        assert [r.kind for r in (call, order, *many)] == ["interaction", "order"] + 2 * [
            "interaction"
        ]
        assert [(r.content or {}).get("type") for r in many] == ["email", "visit"]

        receipt = recorder.records.receipt(order.id, wait=True, timeout=60)
        assert receipt.record_id == order.id
        record = recorder.records.get(order.id)
        assert record.status == "anchored" and record.document is not None
        assert json.loads(record.document)["body"]["order_number"] == "SO-1"

        check = receipt.verify(rpc_url=live.rpc_url, content=record.document)
        steps = {step.name: step.status.value for step in check.steps}
        assert check.verdict == "valid", check.to_json()
        assert steps["root_on_chain"] == steps["transaction"] == steps["block"] == "ok"
        assert steps["commitment"] == "skipped"  # the customer's key is the service's secret

        forged = dict(receipt.data, batch={**receipt.data["batch"], "root": "0x" + "11" * 32})
        bad = type(receipt)(forged).verify(rpc_url=live.rpc_url)
        assert bad.verdict == "invalid"

        ids = {c.id for c in recorder.customers.list(page_size=1)}
        assert ada.id in ids

        with pytest.raises(Forbidden):
            recorder.audit.digest()
        with pytest.raises(NotFound) as missing:
            recorder.records.get("0192f1c4-6a4e-7c3a-9b1e-2f6d1a0b9c8d")
        assert "no record" in missing.value.detail


def test_bad_input_raises_validation_failed_with_the_fields(live: LiveService) -> None:
    with client(live, "recorder") as recorder:
        with pytest.raises(ValidationFailed) as refused:
            recorder.customers.create(name="", email="not an email")
        assert {e.field for e in refused.value.errors} >= {"email"}
        with pytest.raises(ValidationFailed) as answered:
            recorder.request("POST", "/v1/customers", json={"name": "x"})
        assert answered.value.status == 422
        assert any(e.field == "email" for e in answered.value.errors)
    with Client(live.url, api_key="nope", max_retries=0) as stranger, pytest.raises(Unauthorized):
        stranger.customers.get("0192f1c4-6a4e-7c3a-9b1e-2f6d1a0b9c8d")


def test_auditor_verifies_audits_digests_and_exports(live: LiveService) -> None:
    with client(live, "recorder") as recorder:
        grace = recorder.customers.create(name="Grace Hopper", email="grace@example.com")
        record = recorder.interactions.create(
            customer_id=grace.id, type="call", channel="phone", occurred_at="2026-11-25T10:00:00Z"
        )
        recorder.records.receipt(record.id, wait=True)
    with client(live, "auditor") as auditor:
        by_id = auditor.audit.verify(record_id=record.id)
        assert by_id["verdict"] == "valid" and by_id["content_checked"] is True, by_id
        receipt = auditor.records.receipt(record.id)
        assert auditor.audit.verify(receipt=receipt, content=record.document)["verdict"] == "valid"
        assert auditor.audit.customer(grace.id)["records"]
        digest = auditor.audit.digest()
        assert digest["format"].startswith("crm-ledger/digest/")
        bundle = auditor.audit.export(customer_id=grace.id)
        header = parse_header(json.loads(bundle.splitlines()[0]))
        assert header.scope.customer_id == grace.id
        run = auditor.audit.ledger(wait=True, timeout=120, poll=0.2)
        assert run["status"] == "done", run


def test_erasure_keeps_the_receipt_valid(live: LiveService) -> None:
    with client(live, "admin") as admin:
        alan = admin.customers.create(name="Alan Turing", email="alan@example.com")
        record = admin.interactions.create(
            customer_id=alan.id, type="call", channel="phone", occurred_at="2026-11-25T10:00:00Z"
        )
        receipt = admin.records.receipt(record.id, wait=True)
        erased = admin.customers.erase(alan.id)
        assert erased.customer_id == alan.id and erased.erased_records == 1
        assert admin.customers.get(alan.id).email is None
        assert admin.records.get(record.id).document is None
        assert receipt.verify(rpc_url=live.rpc_url).verdict == "valid"


def test_marketer_runs_a_campaign(live: LiveService) -> None:
    with client(live, "recorder") as recorder:
        lin = recorder.customers.create(name="Lin", email="lin@example.com")
    with client(live, "marketing") as marketer:
        campaign = marketer.campaigns.create(
            name="Winter",
            budget=1000,
            rules=[{"type": "order_total", "points_per_unit": "1.5"}],
        )
        assert marketer.campaigns.get(campaign.id).budget == 1000
        assert campaign.id in {c.id for c in marketer.campaigns.list()}
        job = marketer.campaigns.award(campaign.id, points=10, customer_ids=[lin.id])
        for _ in range(300):
            job = marketer.campaigns.get_award(campaign.id, job.id)
            if job.status != "queued" and job.pending == 0:
                break
            asyncio.run(asyncio.sleep(0.2))
        assert (job.issued, job.total_points) == (1, 10), job
        account = marketer.loyalty.account(lin.id)
        assert account.chain_balance == 10
        redemption = marketer.redemptions.create(customer_id=lin.id, points=4, reward_ref="mug")
        assert marketer.redemptions.get(redemption.id).points == 4
        assert marketer.campaigns.pause(campaign.id).status == "paused"
        assert marketer.campaigns.resume(campaign.id).status == "active"


def test_events_iterate_and_resume_after_a_cursor(live: LiveService) -> None:
    with client(live, "admin") as admin:
        who = admin.customers.create(name="Feed", email="feed@example.com")
        written = [
            admin.interactions.create(
                customer_id=who.id, type="t", channel="c", occurred_at="2026-11-25T10:00:00Z"
            )
            for _ in range(3)
        ]
        for record in written:
            admin.records.receipt(record.id, wait=True)

        def anchored(after: str | None) -> list[tuple[str, str]]:
            return [
                (event.data.get("record_id", ""), event.cursor)
                for event in admin.events.iter(after=after, types=["record.anchored"], page_size=1)
            ]

        seen: list[tuple[str, str]] = []
        for _ in range(100):
            seen = anchored(None)
            if {r.id for r in written} <= {rid for rid, _ in seen}:
                break
            asyncio.run(asyncio.sleep(0.2))
        ids = [rid for rid, _ in seen]
        assert {r.id for r in written} <= set(ids)
        middle = ids.index(written[1].id)
        resumed = [rid for rid, _ in anchored(seen[middle][1])]
        assert resumed == ids[middle + 1 :]


def test_async_client_records_and_waits(live: LiveService) -> None:
    async def scenario() -> None:
        async with AsyncClient(live.url, api_key=live.keys["recorder"]) as recorder:
            who = await recorder.customers.create(name="Async", email="async@example.com")
            record = await recorder.interactions.create(
                customer_id=who.id, type="t", channel="c", occurred_at="2026-11-25T10:00:00Z"
            )
            order = await recorder.orders.create(
                customer_id=who.id,
                order_number="A-1",
                lines=[{"sku": "X", "quantity": 1, "unit_price": "1"}],
                total="1",
                currency="EUR",
                status="paid",
            )
            receipt = await recorder.records.receipt(record.id, wait=True)
            check = await receipt.averify(rpc_url=live.rpc_url)
            assert check.verdict == "valid"
            assert (await recorder.records.get(order.id)).kind == "order"
            assert who.id in [c.id async for c in recorder.customers.list()]
            anchored = [e async for e in recorder.events.iter(types=["record.anchored"])]
            assert {e.type for e in anchored} <= {"record.anchored"}
        async with AsyncClient(live.url, api_key=live.keys["auditor"]) as auditor:
            assert (await auditor.audit.verify(record_id=record.id))["verdict"] == "valid"
            assert (await auditor.audit.customer(who.id))["records"]
            bundle = await auditor.audit.export(customer_id=who.id)
            assert parse_header(json.loads(bundle.splitlines()[0])).scope.customer_id == who.id
        async with AsyncClient(live.url, api_key=live.keys["marketing"]) as marketer:
            campaign = await marketer.campaigns.create(name="Async", budget=100)
            assert (await marketer.campaigns.get(campaign.id)).budget == 100
            job = await marketer.campaigns.award(campaign.id, points=5, customer_ids=[who.id])
            job = await wait_for_async(
                lambda: marketer.campaigns.get_award(campaign.id, job.id),
                until=lambda found: found.status != "queued" and not found.pending,
                what="the award job",
                interval=0.2,
            )
            account = await marketer.loyalty.account(who.id)
            # The order above may also have earned points in another test's active campaign.
            assert [lot.points for lot in account.lots if lot.campaign_id == campaign.id] == [5]
            assert account.chain_balance is not None and account.chain_balance >= 5
            redemption = await marketer.redemptions.create(
                customer_id=who.id, points=2, reward_ref="pen"
            )
            assert (await marketer.redemptions.get(redemption.id)).points == 2
            assert (await marketer.campaigns.close(campaign.id)).status == "closed"

    asyncio.run(scenario())
