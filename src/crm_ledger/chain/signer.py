"""The anchorer's signing key: from the settings, never from a log.

Exports: `load_signer`, `dev_account`, `is_dev_key`, `DEV_KEY_SEARCH_BOUND`.

Sources, first match wins: `CRM_LEDGER_PRIVATE_KEY`, the encrypted JSON keystore at
`CRM_LEDGER_KEYSTORE_PATH` (with `CRM_LEDGER_KEYSTORE_PASSWORD`), `CRM_LEDGER_MNEMONIC`
(account 0), and, on chain id 31337 only, the public dev mnemonic. The dev mnemonic and the keys
derived from it are refused on every other chain, whichever setting they come through: every
key of `m/44'/60'/0'/0/i` for i below `DEV_KEY_SEARCH_BOUND` (1,000; Anvil and Hardhat fund the
first 10, but anyone can derive the rest), compared by private key.

Secrets stay inside `SecretStr` until the one call that needs them, and that call happens in a
helper that returns None on failure: the error is raised outside the helper's frame, so neither
the message, the chained cause nor the traceback's local variables hold the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from functools import cache
from pathlib import Path
from typing import Any, cast

from eth_account import Account
from eth_account.hdaccount.deterministic import HardNode, SoftNode, derive_child_key
from eth_account.hdaccount.mnemonic import Mnemonic
from eth_account.signers.local import LocalAccount
from pydantic import SecretStr

from crm_ledger.config import DEV_CHAIN_ID, DEV_MNEMONIC, Settings
from crm_ledger.errors import ConfigError

__all__ = ["DEV_KEY_SEARCH_BOUND", "dev_account", "is_dev_key", "load_signer"]

#: Keys m/44'/60'/0'/0/0 to /999 of the public dev mnemonic are refused off chain 31337 (deriving
#: them takes about 0.3 s, once per process).
DEV_KEY_SEARCH_BOUND = 1000
_DEV_ACCOUNT_PATH = (HardNode(44), HardNode(60), HardNode(0), SoftNode(0))

_REAL_KEY_HINT = (
    "configure a real key: CRM_LEDGER_KEYSTORE_PATH and CRM_LEDGER_KEYSTORE_PASSWORD (an "
    "encrypted JSON keystore), or CRM_LEDGER_PRIVATE_KEY"
)

Account.enable_unaudited_hdwallet_features()


def load_signer(settings: Settings, *, chain_id: int) -> LocalAccount:
    """The account that signs anchor transactions on `chain_id`; `ConfigError` if unusable."""
    account, source = _configured_account(settings)
    if account is None:
        if chain_id != DEV_CHAIN_ID:
            raise ConfigError(
                f"no anchorer key is configured for chain id {chain_id}; {_REAL_KEY_HINT}"
            )
        return dev_account(0)
    if chain_id != DEV_CHAIN_ID and is_dev_key(account):
        raise ConfigError(
            f"{source} holds a key of the public development mnemonic; it is accepted on chain "
            f"id {DEV_CHAIN_ID} only, and the node is chain id {chain_id}: {_REAL_KEY_HINT}"
        )
    return account


def dev_account(index: int = 0) -> LocalAccount:
    """Account `index` of the public dev mnemonic (m/44'/60'/0'/0/index); chain 31337 only."""
    account = Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")
    return cast(LocalAccount, account)


def is_dev_key(account: LocalAccount) -> bool:
    """Whether `account` is one of the public dev mnemonic's first `DEV_KEY_SEARCH_BOUND` keys."""
    return bytes(account.key) in _dev_keys()


@cache
def _dev_keys() -> frozenset[bytes]:
    """The dev mnemonic's private keys m/44'/60'/0'/0/0 .. /(DEV_KEY_SEARCH_BOUND - 1)."""
    seed = Mnemonic.to_seed(DEV_MNEMONIC)
    master = hmac.new(b"Bitcoin seed", seed, hashlib.sha512).digest()
    key, chain_code = master[:32], master[32:]
    for node in _DEV_ACCOUNT_PATH:
        key, chain_code = derive_child_key(key, chain_code, node)
    return frozenset(
        derive_child_key(key, chain_code, SoftNode(index))[0]
        for index in range(DEV_KEY_SEARCH_BOUND)
    )


def _configured_account(settings: Settings) -> tuple[LocalAccount | None, str]:
    """The account from the first configured source, and that source's name for messages."""
    if settings.private_key is not None:
        account = _from_key(settings.private_key)
        if account is None:
            raise ConfigError(
                "CRM_LEDGER_PRIVATE_KEY is not a private key: expected 32 bytes as 0x-hex"
            )
        return account, "CRM_LEDGER_PRIVATE_KEY"
    if settings.keystore_path is not None:
        return _from_keystore(settings.keystore_path, settings.keystore_password), (
            f"the keystore {settings.keystore_path}"
        )
    if settings.mnemonic is not None:
        account = _from_mnemonic(settings.mnemonic)
        if account is None:
            raise ConfigError("CRM_LEDGER_MNEMONIC is not a valid BIP-39 mnemonic")
        return account, "CRM_LEDGER_MNEMONIC"
    return None, "the dev mnemonic"


def _from_keystore(path: Path, password: SecretStr | None) -> LocalAccount:
    if password is None:
        raise ConfigError(
            f"CRM_LEDGER_KEYSTORE_PATH is set ({path}) but CRM_LEDGER_KEYSTORE_PASSWORD is not"
        )
    try:
        keystore = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the keystore {path}: {exc.strerror}") from None
    except ValueError:
        raise ConfigError(f"the keystore {path} is not JSON") from None
    account = _decrypt(keystore, password)
    if account is None:
        raise ConfigError(
            f"cannot decrypt the keystore {path}: wrong CRM_LEDGER_KEYSTORE_PASSWORD, or not an "
            "Ethereum JSON keystore"
        )
    return account


def _from_key(secret: SecretStr) -> LocalAccount | None:
    try:
        return cast(LocalAccount, Account.from_key(secret.get_secret_value()))
    except Exception:
        return None


def _from_mnemonic(secret: SecretStr) -> LocalAccount | None:
    try:
        words = " ".join(secret.get_secret_value().split())
        return cast(LocalAccount, Account.from_mnemonic(words))
    except Exception:
        return None


def _decrypt(keystore: Any, password: SecretStr) -> LocalAccount | None:
    try:
        key = Account.decrypt(keystore, password.get_secret_value())
        return cast(LocalAccount, Account.from_key(key))
    except Exception:
        return None
