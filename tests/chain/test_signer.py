"""Which key signs: configured keys first, the dev mnemonic only on chain id 31337."""

from __future__ import annotations

import json
import traceback
from pathlib import Path

import pytest
from eth_account import Account

from crm_ledger.chain.signer import DEV_KEY_SEARCH_BOUND, dev_account, load_signer
from crm_ledger.config import DEV_CHAIN_ID, DEV_MNEMONIC
from crm_ledger.errors import ConfigError

from .conftest import make_settings

ANVIL_ACCOUNT_0 = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
PUBLIC_CHAIN_IDS = [1, 5, 137]


def write_keystore(path: Path, key: bytes, password: str) -> Path:
    """An eth-account encrypted JSON keystore holding `key` (light KDF work: it is a test)."""
    keystore = Account.encrypt(key, password, kdf="pbkdf2", iterations=1000)
    path.write_text(json.dumps(keystore), encoding="utf-8")
    return path


def full_text(error: BaseException) -> str:
    """The message, chained causes and traceback of `error`, as a log would print them."""
    return "".join(traceback.format_exception(error))


def test_dev_mnemonic_is_the_default_on_the_dev_chain(tmp_path: Path) -> None:
    signer = load_signer(make_settings(tmp_path), chain_id=DEV_CHAIN_ID)

    assert signer.address == ANVIL_ACCOUNT_0


@pytest.mark.parametrize("chain_id", PUBLIC_CHAIN_IDS)
def test_no_key_is_refused_off_the_dev_chain(tmp_path: Path, chain_id: int) -> None:
    with pytest.raises(ConfigError, match=f"chain id {chain_id}") as caught:
        load_signer(make_settings(tmp_path), chain_id=chain_id)

    assert "configure a real key" in str(caught.value)


@pytest.mark.parametrize("chain_id", PUBLIC_CHAIN_IDS)
def test_dev_mnemonic_setting_is_refused_off_the_dev_chain(tmp_path: Path, chain_id: int) -> None:
    settings = make_settings(tmp_path, mnemonic=DEV_MNEMONIC)

    with pytest.raises(ConfigError, match=f"chain id {chain_id}") as caught:
        load_signer(settings, chain_id=chain_id)

    assert "CRM_LEDGER_MNEMONIC" in str(caught.value)
    assert "configure a real key" in str(caught.value)


@pytest.mark.parametrize("chain_id", PUBLIC_CHAIN_IDS)
# 10 and 15: beyond the ten Anvil funds, which the guard once stopped at (issue 10, finding 5).
@pytest.mark.parametrize("index", [0, 5, 9, 10, 15, 999])
def test_dev_private_keys_are_refused_off_the_dev_chain(
    tmp_path: Path, chain_id: int, index: int
) -> None:
    key = dev_account(index).key.to_0x_hex()
    settings = make_settings(tmp_path, private_key=key)

    with pytest.raises(ConfigError, match=f"chain id {chain_id}") as caught:
        load_signer(settings, chain_id=chain_id)

    assert key not in full_text(caught.value)
    assert key[2:] not in full_text(caught.value)


def test_dev_key_in_a_keystore_is_refused_off_the_dev_chain(tmp_path: Path) -> None:
    keystore = write_keystore(tmp_path / "dev.json", dev_account(1).key, "pw")
    settings = make_settings(tmp_path, keystore_path=keystore, keystore_password="pw")

    with pytest.raises(ConfigError, match="chain id 137"):
        load_signer(settings, chain_id=137)


@pytest.mark.parametrize("source", ["private_key", "mnemonic"])
def test_dev_keys_are_accepted_on_the_dev_chain(tmp_path: Path, source: str) -> None:
    value = dev_account(0).key.to_0x_hex() if source == "private_key" else DEV_MNEMONIC
    settings = make_settings(tmp_path, **{source: value})

    assert load_signer(settings, chain_id=DEV_CHAIN_ID).address == ANVIL_ACCOUNT_0


@pytest.mark.parametrize("index", [10, 15])
def test_dev_keys_beyond_the_funded_ten_are_refused_from_every_source(
    tmp_path: Path, index: int
) -> None:
    account = dev_account(index)
    keystore = write_keystore(tmp_path / "dev.json", account.key, "pw")

    for settings in (
        make_settings(tmp_path, private_key=account.key.to_0x_hex()),
        make_settings(tmp_path, keystore_path=keystore, keystore_password="pw"),
    ):
        with pytest.raises(ConfigError, match="public development mnemonic"):
            load_signer(settings, chain_id=1)


def test_dev_key_beyond_the_search_bound_is_not_recognised(tmp_path: Path) -> None:
    # The documented bound: a key past it is treated as any other (no chain would fund it).
    key = dev_account(DEV_KEY_SEARCH_BOUND).key.to_0x_hex()

    signer = load_signer(make_settings(tmp_path, private_key=key), chain_id=1)

    assert signer.address == dev_account(DEV_KEY_SEARCH_BOUND).address


def test_keystore_round_trip(tmp_path: Path) -> None:
    account = Account.create()
    keystore = write_keystore(tmp_path / "anchorer.json", account.key, "correct horse")
    settings = make_settings(tmp_path, keystore_path=keystore, keystore_password="correct horse")

    signer = load_signer(settings, chain_id=1)

    assert signer.address == account.address
    assert signer.key == account.key


def test_keystore_with_a_wrong_password_names_the_setting_not_the_password(
    tmp_path: Path,
) -> None:
    keystore = write_keystore(tmp_path / "anchorer.json", Account.create().key, "right")
    settings = make_settings(tmp_path, keystore_path=keystore, keystore_password="wrong-pw-123")

    with pytest.raises(ConfigError, match="CRM_LEDGER_KEYSTORE_PASSWORD") as caught:
        load_signer(settings, chain_id=1)

    assert "wrong-pw-123" not in full_text(caught.value)
    assert caught.value.__cause__ is None and caught.value.__context__ is None


def test_keystore_without_a_password_is_refused(tmp_path: Path) -> None:
    keystore = write_keystore(tmp_path / "anchorer.json", Account.create().key, "pw")

    with pytest.raises(ConfigError, match="CRM_LEDGER_KEYSTORE_PASSWORD is not"):
        load_signer(make_settings(tmp_path, keystore_path=keystore), chain_id=1)


@pytest.mark.parametrize("content", ["", "not json", "{}"])
def test_unreadable_keystores_are_refused(tmp_path: Path, content: str) -> None:
    keystore = tmp_path / "broken.json"
    keystore.write_text(content, encoding="utf-8")
    settings = make_settings(tmp_path, keystore_path=keystore, keystore_password="pw")

    with pytest.raises(ConfigError, match="keystore"):
        load_signer(settings, chain_id=1)


def test_missing_keystore_file_is_refused(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, keystore_path=tmp_path / "absent.json", keystore_password="pw"
    )

    with pytest.raises(ConfigError, match="cannot read the keystore"):
        load_signer(settings, chain_id=1)


def test_malformed_private_key_never_appears_in_the_error(tmp_path: Path) -> None:
    almost_a_key = "0x" + "ab" * 31 + "zz"

    with pytest.raises(ConfigError, match="CRM_LEDGER_PRIVATE_KEY is not a private key") as caught:
        load_signer(make_settings(tmp_path, private_key=almost_a_key), chain_id=1)

    assert "ab" * 31 not in full_text(caught.value)
    assert caught.value.__cause__ is None and caught.value.__context__ is None


def test_malformed_mnemonic_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CRM_LEDGER_MNEMONIC"):
        load_signer(make_settings(tmp_path, mnemonic="correct horse battery staple"), chain_id=1)


def test_private_key_wins_over_keystore_and_mnemonic(tmp_path: Path) -> None:
    chosen, other = Account.create(), Account.create()
    keystore = write_keystore(tmp_path / "other.json", other.key, "pw")
    settings = make_settings(
        tmp_path,
        private_key=chosen.key.to_0x_hex(),
        keystore_path=keystore,
        keystore_password="pw",
        mnemonic=DEV_MNEMONIC,
    )

    assert load_signer(settings, chain_id=1).address == chosen.address


def test_keystore_wins_over_mnemonic(tmp_path: Path) -> None:
    stored = Account.create()
    keystore = write_keystore(tmp_path / "anchorer.json", stored.key, "pw")
    settings = make_settings(
        tmp_path, keystore_path=keystore, keystore_password="pw", mnemonic=DEV_MNEMONIC
    )

    assert load_signer(settings, chain_id=1).address == stored.address


def test_settings_never_show_the_key(tmp_path: Path) -> None:
    key = Account.create().key.to_0x_hex()
    settings = make_settings(tmp_path, private_key=key)

    signer = load_signer(settings, chain_id=1)

    assert key not in repr(settings) and key not in str(settings)
    assert key not in repr(signer)
