"""Personal data at rest: sealing, the key ring and its file, the blind index, erasure of the
data key and of every copy (`journal.erasure`, `runtime.PERSONAL_DATA_COPIES`)."""

from __future__ import annotations

import base64
import logging
import stat
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.config import Settings
from crm_ledger.db.models import Customer, LoyaltyRedemption, new_id
from crm_ledger.errors import ConfigError, KeyUnavailable
from crm_ledger.journal.customers import create_customer, find_customer_by_email, personal_fields
from crm_ledger.journal.erasure import erase_customer
from crm_ledger.journal.privacy import (
    KeyRing,
    MasterKey,
    PersonalFields,
    load_keyring,
    new_data_key,
    open_personal,
    open_response,
    seal_personal,
    seal_response,
    unwrap_data_key,
    wrap_data_key,
)
from crm_ledger.journal.schemas import CustomerCreate

ADA = CustomerCreate(name="Ada Lovelace", email="Ada@Example.com", phone="+44 20 7946 0958")


def settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path, **values)  # type: ignore[call-arg,arg-type]


# Sealing --------------------------------------------------------------------------------------


def test_sealed_fields_open_only_with_their_key_and_in_their_row() -> None:
    keyring = KeyRing.generate()
    data_key = new_data_key()
    fields = PersonalFields(name="Zoë", email="z@example.com", phone=None)
    sealed = seal_personal(data_key, customer_id="a", fields=fields)
    assert b"z@example.com" not in sealed and "Zoë".encode() not in sealed
    assert open_personal(data_key, customer_id="a", sealed=sealed) == fields
    with pytest.raises(KeyUnavailable):
        open_personal(data_key, customer_id="b", sealed=sealed)
    with pytest.raises(KeyUnavailable):
        open_personal(new_data_key(), customer_id="a", sealed=sealed)

    wrapped = wrap_data_key(keyring, customer_id="a", data_key=data_key)
    assert unwrap_data_key(keyring, customer_id="a", wrapped=wrapped) == data_key
    with pytest.raises(KeyUnavailable, match="moved from another row"):
        unwrap_data_key(keyring, customer_id="b", wrapped=wrapped)
    with pytest.raises(KeyUnavailable, match="not configured"):
        unwrap_data_key(KeyRing.generate(), customer_id="a", wrapped=wrapped)

    answer = seal_response(keyring, scope="1|k", body='{"name":"Zoë"}')
    assert open_response(keyring, scope="1|k", sealed=answer) == '{"name":"Zoë"}'
    with pytest.raises(KeyUnavailable):
        open_response(keyring, scope="2|k", sealed=answer)


def test_a_ring_with_two_keys_opens_what_either_sealed() -> None:
    old, new = MasterKey(b"\x01" * 32), MasterKey(b"\x02" * 32)
    data_key = new_data_key()
    under_old = wrap_data_key(KeyRing(old), customer_id="a", data_key=data_key)
    both = KeyRing(new, old)
    assert unwrap_data_key(both, customer_id="a", wrapped=under_old) == data_key
    assert both.email_indexes("a@b.c") == [old.email_index("a@b.c"), new.email_index("a@b.c")]
    # The blind index is keyed: another master key gives another index for the same email.
    assert old.email_index(" A@B.c") == old.email_index("a@b.c") != new.email_index("a@b.c")


# The key ring's origin ------------------------------------------------------------------------


def test_a_dev_master_key_is_generated_once_with_mode_0600_and_never_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        first = load_keyring(settings(tmp_path))
    key_path = tmp_path / "master.key"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    secret = key_path.read_text().strip()
    assert str(key_path) in caplog.text and secret not in caplog.text
    assert base64.b64decode(secret).hex() not in caplog.text
    assert load_keyring(settings(tmp_path)).current.key_id == first.current.key_id


def test_the_master_key_comes_from_the_environment_or_a_file(tmp_path: Path) -> None:
    secret = base64.b64encode(b"\x07" * 32).decode()
    from_env = load_keyring(settings(tmp_path, master_key=secret))
    assert from_env.current.key_id == MasterKey(b"\x07" * 32).key_id
    assert not (tmp_path / "master.key").exists()
    path = tmp_path / "elsewhere.key"
    path.write_text(secret + "\n")
    assert load_keyring(settings(tmp_path, master_key_file=path)).current.key_id == (
        from_env.current.key_id
    )


@pytest.mark.parametrize("bad", ["", "not base64!", base64.b64encode(b"short").decode()])
def test_a_bad_master_key_is_refused_without_echoing_it(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError, match="32 random bytes in base64") as caught:
        load_keyring(settings(tmp_path, master_key=bad))
    assert not bad or bad not in str(caught.value)


def test_a_missing_configured_key_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the master key file"):
        load_keyring(settings(tmp_path, master_key_file=tmp_path / "nope.key"))


# The journal ----------------------------------------------------------------------------------


def test_customers_are_stored_sealed_and_found_by_email(
    session_factory: sessionmaker[Session],
) -> None:
    with session_factory.begin() as session:
        ada = create_customer(session=session, payload=ADA)
        create_customer(
            session=session, payload=CustomerCreate(name="Grace", email="grace@example.com")
        )
    with session_factory() as session:
        row = session.scalars(select(Customer).where(Customer.id == ada.id)).one()
        assert row.personal is not None and b"Lovelace" not in row.personal
        assert personal_fields(session, row) == PersonalFields(
            name="Ada Lovelace", email="Ada@Example.com", phone="+44 20 7946 0958"
        )
        for spelling in ("ada@example.com", "  ADA@EXAMPLE.COM ", "Ada@Example.com"):
            found = find_customer_by_email(session, spelling)
            assert found is not None and found.id == ada.id
        assert find_customer_by_email(session, "ada@example.org") is None
        assert find_customer_by_email(session, "example.com") is None


def test_erasure_destroys_the_data_key_and_every_copy(
    session_factory: sessionmaker[Session],
) -> None:
    with session_factory.begin() as session:
        ada = create_customer(session=session, payload=ADA)
        session.add(
            LoyaltyRedemption(
                id=new_id(),
                customer_pk=ada.pk,
                points=5,
                reward_ref="engraved mug for Ada Lovelace",
                burn_id=b"\x01" * 32,
                chain_ref=b"\x02" * 32,
                address="0x" + "11" * 20,
                status="pending",
            )
        )
    with session_factory.begin() as session:
        erase_customer(session=session, customer_id=ada.id)
    with session_factory() as session:
        row = session.scalars(select(Customer).where(Customer.id == ada.id)).one()
        assert (row.wrapped_data_key, row.personal, row.email_index) == (None, None, None)
        assert personal_fields(session, row) == PersonalFields()
        assert find_customer_by_email(session, "ada@example.com") is None
        assert session.scalars(select(LoyaltyRedemption.reward_ref)).all() == [""]
