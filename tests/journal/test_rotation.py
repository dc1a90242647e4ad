"""`crm-ledger keys rotate-master`: every data key re-wrapped, records untouched, resumable."""

from __future__ import annotations

import base64
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from crm_ledger.cli import app
from crm_ledger.config import Settings
from crm_ledger.db.models import (
    Customer,
    IdempotencyEntry,
    IngestSource,
    Record,
    WebhookSubscription,
)
from crm_ledger.db.session import make_engine, make_session_factory, upgrade_database
from crm_ledger.errors import KeyUnavailable
from crm_ledger.ingest.schemas import SourceCreate
from crm_ledger.ingest.sources import create_source
from crm_ledger.journal.customers import create_customer, find_customer_by_email, personal_fields
from crm_ledger.journal.keys import Role, create_api_key
from crm_ledger.journal.privacy import (
    KeyRing,
    MasterKey,
    SecretPurpose,
    attach_keyring,
    load_keyring,
    open_response,
    open_secret,
    read_key_file,
    seal_response,
    unwrap_data_key,
    write_key_file,
)
from crm_ledger.journal.records import record_interaction
from crm_ledger.journal.schemas import CustomerCreate, InteractionCreate
from crm_ledger.outbound.webhooks.schemas import WebhookSubscriptionCreate
from crm_ledger.outbound.webhooks.subscriptions import create_subscription

runner = CliRunner()


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path / "data",
        database_url=database_url,
    )


@pytest.fixture
def journal(settings: Settings) -> Iterator[Engine]:
    """The journal as the service opens it: migrated, with the settings' key ring."""
    engine = make_engine(settings.resolved_database_url)
    attach_keyring(engine, load_keyring(settings))
    upgrade_database(engine)
    yield engine
    engine.dispose()


def add_customer(sessions: sessionmaker[Session], name: str) -> str:
    with sessions.begin() as session:
        payload = CustomerCreate(name=name, email=f"{name}@example.com", phone="+1 555 0100")
        customer = create_customer(session=session, payload=payload)
        record_interaction(
            session=session,
            payload=InteractionCreate.model_validate(
                {
                    "customer_id": customer.id,
                    "type": "support_call",
                    "channel": "phone",
                    "occurred_at": "2026-11-25T10:00:00Z",
                    "details": {"topic": "billing"},
                }
            ),
        )
        return customer.id


def records(sessions: sessionmaker[Session]) -> list[tuple[bytes | None, bytes]]:
    with sessions() as session:
        return [(r.content, r.commitment) for r in session.scalars(select(Record))]


def rotate(settings: Settings, *extra: str) -> tuple[int, str]:
    result = runner.invoke(
        app,
        ["keys", "rotate-master", "--data-dir", str(settings.data_dir), *extra],
        env={"CRM_LEDGER_DATABASE_URL": settings.resolved_database_url},
    )
    return result.exit_code, result.stderr


def check_opens(settings: Settings, names: list[str]) -> KeyRing:
    """Every customer opens and is found by email with the key ring the settings now load."""
    keyring = load_keyring(settings)
    engine = make_engine(settings.resolved_database_url)
    attach_keyring(engine, keyring)
    try:
        with make_session_factory(engine)() as session:
            for name in names:
                found = find_customer_by_email(session, f"{name.upper()}@example.com")
                assert found is not None
                assert personal_fields(session, found).name == name
    finally:
        engine.dispose()
    return keyring


def test_rotation_rewraps_every_data_key_and_leaves_records_alone(
    settings: Settings, journal: Engine
) -> None:
    sessions = make_session_factory(journal)
    names = ["ada", "grace"]
    for name in names:
        add_customer(sessions, name)
    with sessions.begin() as session:
        create_api_key(session, role=Role.RECORDER)
        old = load_keyring(settings)
        session.add(
            IdempotencyEntry(
                api_key_pk=1,
                key="k",
                request_hash=b"\x00" * 32,
                status_code=201,
                response_sealed=seal_response(old, scope="1|k", body='{"name":"ada"}'),
            )
        )
        shop = create_source(
            session=session,
            payload=SourceCreate(platform="shopify", name="Tea shop", secret="shop-secret"),
        ).id
        hook = create_subscription(
            session=session,
            payload=WebhookSubscriptionCreate(
                url="https://example.com/hook", event_types=["record.anchored"]
            ),
            secret="whsec_signing",
        ).id
    before = records(sessions)
    key_path = settings.data_dir / "master.key"
    old_text = key_path.read_text()

    code, err = rotate(settings)
    assert code == 0, err
    assert "Re-wrapped 2 data keys, 1 stored answers and 2 shop and webhook secrets" in err
    assert key_path.read_text() != old_text and old_text.strip() not in err
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert not list(settings.data_dir.glob("*.next"))

    new = check_opens(settings, names)
    assert records(sessions) == before
    with sessions() as session:
        customer = session.scalars(select(Customer)).first()
        assert customer is not None and customer.wrapped_data_key is not None
        with pytest.raises(KeyUnavailable):
            unwrap_data_key(old, customer_id=customer.id, wrapped=customer.wrapped_data_key)
        sealed = session.scalars(select(IdempotencyEntry.response_sealed)).one()
        assert sealed is not None
        assert open_response(new, scope="1|k", sealed=sealed) == '{"name":"ada"}'
        kept = [
            (SecretPurpose.SHOP_SOURCE, shop, session.scalars(select(IngestSource)).one()),
            (
                SecretPurpose.WEBHOOK_SIGNING,
                hook,
                session.scalars(select(WebhookSubscription)).one(),
            ),
        ]
    for (purpose, bound_to, row), secret in zip(
        kept, ["shop-secret", "whsec_signing"], strict=True
    ):
        sealed = row.secret_ciphertext if isinstance(row, IngestSource) else row.secret
        assert sealed is not None
        assert open_secret(new, purpose=purpose, bound_to=bound_to, sealed=sealed) == secret
        with pytest.raises(KeyUnavailable):  # sealed under the new key only
            open_secret(old, purpose=purpose, bound_to=bound_to, sealed=sealed)


def test_an_interrupted_rotation_is_finished_by_running_it_again(
    settings: Settings, journal: Engine
) -> None:
    add_customer(make_session_factory(journal), "ada")
    old = load_keyring(settings).current
    # The rotation wrote its next key and re-wrapped some rows (here: one written since),
    # then stopped before replacing the key file.
    pending = settings.data_dir / "master.key.next"
    write_key_file(pending, b"\x05" * 32)
    half_done = make_engine(settings.resolved_database_url)
    attach_keyring(half_done, KeyRing(MasterKey(b"\x05" * 32), old))
    add_customer(make_session_factory(half_done), "grace")
    half_done.dispose()
    # Meanwhile a restarted service opens rows under either key.
    check_opens(settings, ["ada", "grace"])

    code, err = rotate(settings)
    assert code == 0, err
    assert "Re-wrapped 1 data keys," in err
    assert read_key_file(settings.data_dir / "master.key") == b"\x05" * 32
    assert not pending.exists()
    check_opens(settings, ["ada", "grace"])


def test_a_key_from_the_environment_rotates_into_a_new_key_file(
    tmp_path: Path, database_url: str
) -> None:
    secret = base64.b64encode(b"\x09" * 32).decode()
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path / "data",
        database_url=database_url,
        master_key=secret,
    )
    engine = make_engine(database_url)
    attach_keyring(engine, load_keyring(settings))
    upgrade_database(engine)
    add_customer(make_session_factory(engine), "ada")
    engine.dispose()
    env = {"CRM_LEDGER_DATABASE_URL": database_url, "CRM_LEDGER_MASTER_KEY": secret}
    args = ["keys", "rotate-master", "--data-dir", str(settings.data_dir)]

    refused = runner.invoke(app, args, env=env)
    assert refused.exit_code == 1 and "--new-key-file" in refused.stderr

    new_file = tmp_path / "new.key"
    done = runner.invoke(app, [*args, "--new-key-file", str(new_file)], env=env)
    assert done.exit_code == 0, done.stderr
    assert stat.S_IMODE(new_file.stat().st_mode) == 0o600
    assert "Re-wrapped 1 data keys," in done.stderr and str(new_file) in done.stderr
    rotated = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path / "data",
        database_url=database_url,
        master_key=new_file.read_text().strip(),
    )
    check_opens(rotated, ["ada"])
