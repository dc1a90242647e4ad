"""The client through a proxy that drops connections, delays answers and answers 503/429: every
write is recorded once, never twice, and every retry carries the same Idempotency-Key."""

from __future__ import annotations

import random

import pytest

from crm_ledger.client import Client, ConnectionFailed, RateLimited, RecordPublic
from tests.client.conftest import LiveService
from tests.client.proxy import FaultProxy

pytestmark = pytest.mark.chain


def _records_of(live: LiveService, customer_id: str) -> list[dict[str, object]]:
    with Client(live.url, api_key=live.keys["admin"]) as admin:
        records: list[dict[str, object]] = admin.audit.customer(customer_id)["records"]
    return records


def _write(client: Client, customer_id: str, n: int) -> RecordPublic:
    return client.interactions.create(
        customer_id=customer_id,
        type="call",
        channel="phone",
        occurred_at="2026-11-25T10:00:00Z",
        details={"n": n},
    )


def _keys_of_posts(proxy: FaultProxy, path: str) -> list[str | None]:
    return [key for method, target, key, _ in proxy.seen if method == "POST" and target == path]


@pytest.mark.parametrize(
    ("action", "extra"),
    [
        ("drop_before", {}),
        ("drop_after", {}),
        ("delay_after", {"seconds": 3.0}),
        ("status", {"status": 503, "retry_after": "0"}),
        ("status", {"status": 429, "retry_after": "1"}),
        ("status", {"status": 503, "retry_after": None}),
    ],
)
def test_a_write_retried_after_a_fault_is_recorded_once(
    live: LiveService, proxy: FaultProxy, action: str, extra: dict[str, object]
) -> None:
    with Client(proxy.url, api_key=live.keys["recorder"], timeout=1.0, backoff=0.05) as client:
        who = client.customers.create(name="Faulty", email="faulty@example.com")
        proxy.fail(action, times=2, **extra)  # type: ignore[arg-type]
        record = _write(client, who.id, 1)
    keys = _keys_of_posts(proxy, "/v1/interactions")
    assert len(keys) == 3 and keys[0] is not None and len(set(keys)) == 1
    stored = _records_of(live, who.id)
    assert [r["record_id"] for r in stored] == [record.id]


def test_many_writes_under_random_faults_are_each_recorded_once(
    live: LiveService, proxy: FaultProxy
) -> None:
    chance = random.Random(15)
    with Client(proxy.url, api_key=live.keys["recorder"], timeout=1.0, backoff=0.05) as client:
        who = client.customers.create(name="Storm", email="storm@example.com")
        written = []
        for n in range(20):
            action = chance.choice(["pass", "drop_before", "drop_after", "delay_after", "status"])
            if action != "pass":
                proxy.fail(action, times=chance.randint(1, 3), seconds=1.5, status=503)
            written.append(_write(client, who.id, n).id)
    stored = [r["record_id"] for r in _records_of(live, who.id)]
    assert sorted(stored) == sorted(written) and len(set(written)) == 20


def test_when_every_retry_fails_the_error_says_so_and_nothing_is_half_written(
    live: LiveService, proxy: FaultProxy
) -> None:
    with Client(
        proxy.url, api_key=live.keys["recorder"], timeout=1.0, max_retries=2, backoff=0.05
    ) as client:
        who = client.customers.create(name="Unlucky", email="unlucky@example.com")
        proxy.fail("drop_before", times=3)
        with pytest.raises(ConnectionFailed, match="after 3 attempts"):
            _write(client, who.id, 1)
        proxy.fail("status", times=3, status=429, retry_after="0")
        with pytest.raises(RateLimited) as limited:
            _write(client, who.id, 2)
        assert limited.value.retry_after == 0
    assert _records_of(live, who.id) == []


def test_a_caller_given_key_is_sent_and_a_repeat_replays_the_same_record(
    live: LiveService, proxy: FaultProxy
) -> None:
    with Client(proxy.url, api_key=live.keys["recorder"]) as client:
        who = client.customers.create(name="Again", email="again@example.com")
        first = client.interactions.create(
            customer_id=who.id,
            type="call",
            channel="phone",
            occurred_at="2026-11-25T10:00:00Z",
            idempotency_key=f"call-{who.id}",
        )
        again = client.interactions.create(
            customer_id=who.id,
            type="call",
            channel="phone",
            occurred_at="2026-11-25T10:00:00Z",
            idempotency_key=f"call-{who.id}",
        )
    assert first == again
    assert _keys_of_posts(proxy, "/v1/interactions") == [f"call-{who.id}"] * 2
    assert [r["record_id"] for r in _records_of(live, who.id)] == [first.id]
