"""Wallets: BIP-44 addresses from the public node match eth-account; dev keys stay on 31337."""

from __future__ import annotations

from pathlib import Path

import pytest
from eth_account import Account

from crm_ledger.chain.signer import dev_account
from crm_ledger.config import DEV_MNEMONIC
from crm_ledger.errors import ConfigError
from crm_ledger.loyalty.wallets import (
    CUSTODIAL_INDEX_BASE,
    WalletKeyring,
    load_operator,
    load_wallet_keyring,
)
from tests.loyalty.conftest import loyalty_settings

OWN_MNEMONIC = "legal winner thank year wave sausage worth useful legal winner thank yellow"


@pytest.mark.parametrize("index", [0, 1, CUSTODIAL_INDEX_BASE + 1, 2**31 - 1])
def test_addresses_match_eth_accounts_hd_derivation(keyring: WalletKeyring, index: int) -> None:
    expected = Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")
    assert keyring.address(index) == expected.address


def test_customers_never_share_the_service_accounts(keyring: WalletKeyring) -> None:
    service = {dev_account(i).address for i in range(10)}
    assert keyring.index_of(1) == CUSTODIAL_INDEX_BASE + 1
    assert keyring.address(keyring.index_of(1)) not in service
    with pytest.raises(ValueError):
        keyring.index_of(0)


def test_dev_mnemonic_only_on_chain_31337(tmp_path: Path) -> None:
    settings = loyalty_settings(tmp_path)
    assert load_wallet_keyring(settings, chain_id=31337) is not None
    assert load_operator(settings, chain_id=31337, anchorer=dev_account(0).address) == dev_account(
        1
    )
    with pytest.raises(ConfigError, match="CRM_LEDGER_WALLET_MNEMONIC"):
        load_wallet_keyring(settings, chain_id=1)
    explicit_dev = loyalty_settings(tmp_path, wallet_mnemonic=DEV_MNEMONIC)
    with pytest.raises(ConfigError, match="public development mnemonic"):
        load_wallet_keyring(explicit_dev, chain_id=1)
    with pytest.raises(ConfigError, match="development mnemonic"):
        load_operator(
            loyalty_settings(tmp_path, loyalty_private_key=dev_account(5).key.hex()),
            chain_id=1,
            anchorer=dev_account(0).address,
        )


def test_own_seed_works_anywhere_and_secrets_stay_out_of_messages(tmp_path: Path) -> None:
    settings = loyalty_settings(tmp_path, wallet_mnemonic=OWN_MNEMONIC)
    keyring = load_wallet_keyring(settings, chain_id=1)
    assert (
        keyring.address(1000)
        == Account.from_mnemonic(OWN_MNEMONIC, account_path="m/44'/60'/0'/0/1000").address
    )
    assert "legal" not in repr(keyring) and "legal" not in repr(settings)
    broken = loyalty_settings(tmp_path, wallet_mnemonic="legal winner thank nonsense")
    with pytest.raises(ConfigError) as caught:
        load_wallet_keyring(broken, chain_id=1)
    assert "nonsense" not in str(caught.value)


def test_operator_must_not_be_the_anchorer(tmp_path: Path) -> None:
    operator = dev_account(1)
    with pytest.raises(ConfigError, match="race for transaction nonces"):
        load_operator(loyalty_settings(tmp_path), chain_id=31337, anchorer=operator.address)


@pytest.mark.parametrize("index", [10, 15])
def test_an_operator_key_of_the_dev_mnemonic_past_the_funded_ten_is_refused(
    tmp_path: Path, index: int
) -> None:
    settings = loyalty_settings(tmp_path, loyalty_private_key=dev_account(index).key.hex())

    with pytest.raises(ConfigError, match="public development mnemonic"):
        load_operator(settings, chain_id=1, anchorer=dev_account(0).address)
