"""The outbound workers as the service runs them: registered by settings, under the
supervisor, events reaching JetStream and a webhook receiver, states in the status map."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks.webhooks import Webhook

from crm_ledger.config import Settings
from crm_ledger.feed import EventType
from crm_ledger.outbound.webhooks import subscriptions as service
from crm_ledger.outbound.webhooks.schemas import WebhookSubscriptionCreate
from crm_ledger.outbound.webhooks.secrets import new_signing_secret
from crm_ledger.roles import background_workers
from crm_ledger.workers import Supervisor
from tests.outbound.conftest import SHARED_NATS_URL, Receiver, feed_ids, read_stream, write_events
from tests.waiting import until


def settings_for(tmp_path: Path, **overrides: object) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path,
        **overrides,  # type: ignore[arg-type]
    )


def test_the_relay_runs_only_when_a_nats_url_is_set_and_webhooks_unless_turned_off(
    tmp_path: Path, session_factory: sessionmaker[Session]
) -> None:
    names = [
        w.name
        for w in background_workers(
            settings=settings_for(tmp_path), session_factory=session_factory
        )
    ]
    assert "nats-relay" not in names and "webhooks" in names
    names = [
        w.name
        for w in background_workers(
            settings=settings_for(tmp_path, nats_url=SHARED_NATS_URL, run_webhooks=False),
            session_factory=session_factory,
        )
    ]
    assert "nats-relay" in names and "webhooks" not in names


@pytest.mark.asyncio
async def test_under_the_supervisor_events_reach_jetstream_and_a_signed_webhook(
    tmp_path: Path,
    engine: Engine,
    session_factory: sessionmaker[Session],
    shared_stream: str,
    subject_prefix: str,
    receiver: Receiver,
) -> None:
    settings = settings_for(
        tmp_path,
        nats_url=SHARED_NATS_URL,
        nats_stream=shared_stream,
        nats_subject_prefix=subject_prefix,
        webhook_allow_private_urls=True,
    )
    secret = new_signing_secret()
    with session_factory.begin() as session:
        service.create_subscription(
            session=session,
            payload=WebhookSubscriptionCreate(
                url=receiver.url("/crm"), event_types=[EventType.RECORD_ANCHORED.value]
            ),
            secret=secret,
        )
    supervisor = Supervisor(engine=engine, idle_seconds=0.05)
    for worker in background_workers(settings=settings, session_factory=session_factory):
        if worker.name in ("nats-relay", "webhooks"):
            supervisor.add(worker)
    await supervisor.start()
    try:
        await asyncio.to_thread(write_events, session_factory, 9)  # 3 are record.anchored
        await until(
            lambda: (
                len(receiver.on("/crm")) >= 3
                and supervisor.status()["nats-relay"]["items_handled"] >= 9
            ),
            60,
            what=supervisor.status,
        )
        status = supervisor.status()
        assert status["nats-relay"]["state"] in ("running", "idle")
        assert status["webhooks"]["state"] in ("running", "idle")
    finally:
        await supervisor.stop()
    assert [m.msg_id for m in await read_stream(SHARED_NATS_URL, shared_stream)] == feed_ids(
        session_factory
    )
    for request in receiver.on("/crm"):
        assert Webhook(secret).verify(request.body, request.headers)["type"] == "record.anchored"
