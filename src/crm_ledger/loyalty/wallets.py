"""Customer wallets and the loyalty operator's key, from the service's HD seed.

Exports: `WalletKeyring`, `load_wallet_keyring`, `load_operator`, `ensure_wallets`,
`customer_address`, `link_wallet`, `link_message`, `CUSTODIAL_INDEX_BASE`, `OPERATOR_INDEX`.

Every customer gets a custodial address, BIP-44 `m/44'/60'/0'/0/<index>` of the seed in
`CRM_LEDGER_WALLET_MNEMONIC`, with `index = CUSTODIAL_INDEX_BASE + customer pk` stored in
`loyalty_wallets`. Indexes below the base are the service's own accounts: the loyalty operator
is index 1 (and, with the public dev mnemonic on chain 31337, the anchorer is index 0 and Anvil
funds indexes 0 to 9), so no customer ever shares an address with a service account.

Custodial private keys are never computed. The service holds the token's REDEEMER and EXPIRER
roles and burns points directly, so nothing ever has to sign for a customer; `WalletKeyring`
keeps only the extended *public* key of `m/44'/60'/0'/0` and derives addresses from it (BIP-32
public child derivation), after eth-account's HD derivation produced that node from the seed.
The seed and the keys stay inside `SecretStr` and helper frames that return None on failure (as
in `crm_ledger.chain.signer`), so no message, log or traceback holds them.

A customer may instead link an address they own, proven by an EIP-191 signature of
`link_message(...)`; points issued afterwards go there.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import Any, cast

from coincurve import PublicKey
from eth_account import Account
from eth_account.hdaccount.deterministic import HardNode, SoftNode, derive_child_key
from eth_account.hdaccount.mnemonic import Mnemonic
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from eth_utils.address import is_hex_address, to_checksum_address
from eth_utils.crypto import keccak
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from crm_ledger.chain.signer import is_dev_key
from crm_ledger.config import DEV_CHAIN_ID, DEV_MNEMONIC, Settings
from crm_ledger.db.models import LoyaltyWallet, utcnow
from crm_ledger.errors import ConfigError, Conflict, Unprocessable

__all__ = [
    "CUSTODIAL_INDEX_BASE",
    "OPERATOR_INDEX",
    "WalletKeyring",
    "customer_address",
    "ensure_wallets",
    "link_message",
    "link_wallet",
    "load_operator",
    "load_wallet_keyring",
]

#: Custodial index of the customer with pk p is CUSTODIAL_INDEX_BASE + p.
CUSTODIAL_INDEX_BASE = 1000
#: Index of the loyalty operator (token admin, issuer, redeemer, expirer) under the wallet seed.
OPERATOR_INDEX = 1
_ACCOUNT_PATH = (HardNode(44), HardNode(60), HardNode(0), SoftNode(0))
_MAX_SOFT_INDEX = 2**31 - 1
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

Account.enable_unaudited_hdwallet_features()


class WalletKeyring:
    """Custodial addresses under one extended public key (`m/44'/60'/0'/0` of the seed)."""

    def __init__(self, public_key: bytes, chain_code: bytes) -> None:
        self._public_key = public_key
        self._point = PublicKey(public_key)
        self._chain_code = chain_code

    def __repr__(self) -> str:
        return f"WalletKeyring(xpub fingerprint {hashlib.sha256(self._public_key).hexdigest()[:8]})"

    @classmethod
    def from_secret(cls, mnemonic: SecretStr) -> WalletKeyring | None:
        """The keyring of a BIP-39 mnemonic, or None when it is not one."""
        node = _account_node(mnemonic)
        if node is None:
            return None
        return cls(*node)

    def index_of(self, customer_pk: int) -> int:
        """The custodial index of the customer with this pk."""
        index = CUSTODIAL_INDEX_BASE + customer_pk
        if not 0 < customer_pk <= _MAX_SOFT_INDEX - CUSTODIAL_INDEX_BASE:
            raise ValueError(f"customer pk {customer_pk} has no custodial index")
        return index

    def address(self, index: int) -> ChecksumAddress:
        """The address at `m/44'/60'/0'/0/<index>` (BIP-32 public derivation, CKDpub)."""
        if not 0 <= index <= _MAX_SOFT_INDEX:
            raise ValueError(f"{index} is not a non-hardened BIP-32 index")
        digest = hmac.new(
            self._chain_code, self._public_key + index.to_bytes(4, "big"), hashlib.sha512
        ).digest()
        if int.from_bytes(digest[:32], "big") >= _SECP256K1_N:
            # Probability below 2**-127; BIP-32 says to skip the index, which never happens here.
            raise ValueError(f"index {index} derives no valid key: skip it")
        child = self._point.add(digest[:32])
        return to_checksum_address(keccak(child.format(compressed=False)[1:])[-20:])


def _account_node(mnemonic: SecretStr) -> tuple[bytes, bytes] | None:
    """(compressed public key, chain code) of m/44'/60'/0'/0, through eth-account's HD code."""
    try:
        words = " ".join(mnemonic.get_secret_value().split())
        if not Mnemonic().is_mnemonic_valid(words):
            return None
        seed = Mnemonic.to_seed(words)
        master = hmac.new(b"Bitcoin seed", seed, hashlib.sha512).digest()
        key, chain_code = master[:32], master[32:]
        for node in _ACCOUNT_PATH:
            key, chain_code = derive_child_key(key, chain_code, node)
        public_key = PublicKey.from_secret(key).format(compressed=True)
        return public_key, chain_code
    except Exception:
        return None


def _wallet_secret(settings: Settings, *, chain_id: int) -> SecretStr:
    if settings.wallet_mnemonic is None:
        if chain_id != DEV_CHAIN_ID:
            raise ConfigError(
                f"no loyalty wallet seed is configured for chain id {chain_id}: set "
                "CRM_LEDGER_WALLET_MNEMONIC to a BIP-39 mnemonic of your own (the public dev "
                f"mnemonic is used on chain id {DEV_CHAIN_ID} only)"
            )
        return SecretStr(DEV_MNEMONIC)
    if chain_id != DEV_CHAIN_ID and _is_dev_mnemonic(settings.wallet_mnemonic):
        raise ConfigError(
            "CRM_LEDGER_WALLET_MNEMONIC is the public development mnemonic; it is accepted on "
            f"chain id {DEV_CHAIN_ID} only, and the node is chain id {chain_id}"
        )
    return settings.wallet_mnemonic


def _is_dev_mnemonic(secret: SecretStr) -> bool:
    return " ".join(secret.get_secret_value().split()) == DEV_MNEMONIC


def load_wallet_keyring(settings: Settings, *, chain_id: int) -> WalletKeyring:
    """The keyring of custodial addresses on `chain_id`; `ConfigError` if unusable."""
    keyring = WalletKeyring.from_secret(_wallet_secret(settings, chain_id=chain_id))
    if keyring is None:
        raise ConfigError("CRM_LEDGER_WALLET_MNEMONIC is not a valid BIP-39 mnemonic")
    return keyring


def load_operator(settings: Settings, *, chain_id: int, anchorer: str) -> LocalAccount:
    """The loyalty operator's account: `CRM_LEDGER_LOYALTY_PRIVATE_KEY`, else wallet seed index 1.

    Refused with `ConfigError` when it is a dev key off chain 31337, or the anchorer's own
    account: two senders sharing one account would race for nonces.
    """
    if settings.loyalty_private_key is not None:
        account = _from_key(settings.loyalty_private_key)
        if account is None:
            raise ConfigError(
                "CRM_LEDGER_LOYALTY_PRIVATE_KEY is not a private key: expected 32 bytes as 0x-hex"
            )
        source = "CRM_LEDGER_LOYALTY_PRIVATE_KEY"
    else:
        account = _from_mnemonic(_wallet_secret(settings, chain_id=chain_id), OPERATOR_INDEX)
        if account is None:
            raise ConfigError("CRM_LEDGER_WALLET_MNEMONIC is not a valid BIP-39 mnemonic")
        source = f"account {OPERATOR_INDEX} of CRM_LEDGER_WALLET_MNEMONIC"
    if chain_id != DEV_CHAIN_ID and is_dev_key(account):
        raise ConfigError(
            f"the loyalty operator ({source}) is a key of the public development mnemonic; it is "
            f"accepted on chain id {DEV_CHAIN_ID} only, and the node is chain id {chain_id}"
        )
    if account.address == to_checksum_address(anchorer):
        raise ConfigError(
            f"the loyalty operator ({source}) is the anchorer's account {account.address}: give "
            "loyalty an account of its own (CRM_LEDGER_LOYALTY_PRIVATE_KEY), or the two would "
            "race for transaction nonces"
        )
    return account


def _from_key(secret: SecretStr) -> LocalAccount | None:
    try:
        return cast(LocalAccount, Account.from_key(secret.get_secret_value()))
    except Exception:
        return None


def _from_mnemonic(secret: SecretStr, index: int) -> LocalAccount | None:
    try:
        words = " ".join(secret.get_secret_value().split())
        path = f"m/44'/60'/0'/0/{index}"
        return cast(LocalAccount, Account.from_mnemonic(words, account_path=path))
    except Exception:
        return None


# Database ----------------------------------------------------------------------------------


def customer_address(session: Session, customer_pk: int) -> LoyaltyWallet | None:
    """The customer's wallet row, if one was made."""
    return session.scalars(
        select(LoyaltyWallet).where(LoyaltyWallet.customer_pk == customer_pk)
    ).first()


def ensure_wallets(
    session: Session, keyring: WalletKeyring, customer_pks: Iterable[int]
) -> dict[int, str]:
    """The loyalty address of each customer, making custodial wallets for those without one.

    Safe against a concurrent caller: inserts skip rows another transaction made first.
    """
    wanted = sorted(set(customer_pks))
    found = _addresses(session, wanted)
    missing = [pk for pk in wanted if pk not in found]
    if missing:
        now = utcnow()
        rows: list[dict[str, Any]] = []
        for pk in missing:
            index = keyring.index_of(pk)
            rows.append(
                {
                    "customer_pk": pk,
                    "address": keyring.address(index),
                    "hd_index": index,
                    "created_at": now,
                }
            )
        dialect = session.get_bind().dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        for start in range(0, len(rows), 5000):
            session.execute(
                insert(LoyaltyWallet).on_conflict_do_nothing(), rows[start : start + 5000]
            )
        found.update(_addresses(session, missing))
    return found


def _addresses(session: Session, customer_pks: list[int]) -> dict[int, str]:
    found: dict[int, str] = {}
    for start in range(0, len(customer_pks), 5000):
        chunk = customer_pks[start : start + 5000]
        found.update(
            session.execute(
                select(LoyaltyWallet.customer_pk, LoyaltyWallet.address).where(
                    LoyaltyWallet.customer_pk.in_(chunk)
                )
            )
            .tuples()
            .all()
        )
    return found


def link_message(customer_id: str, address: str) -> str:
    """What the owner of `address` signs (EIP-191 personal_sign) to link it to the customer."""
    return f"crm-ledger: link {to_checksum_address(address)} to loyalty account {customer_id}"


def link_wallet(
    *,
    session: Session,
    keyring: WalletKeyring | None,
    customer_pk: int,
    customer_id: str,
    address: str,
    signature: str,
    live_points: int,
) -> LoyaltyWallet:
    """Point the customer's loyalty account at `address`, which they proved to own.

    Refused (`Conflict`) while the current address holds points or points are on their way to
    it (transfers between holders are disabled, so they could not follow), or when another
    customer linked the address. `Unprocessable` when the address is not one or the signature is
    not the address's.
    """
    if not is_hex_address(address):
        message = "address must be 0x followed by 40 hexadecimal digits"
        raise Unprocessable(
            message, errors=[{"location": "body", "field": "address", "message": message}]
        )
    checksummed = to_checksum_address(address)
    signer = _recover(link_message(customer_id, checksummed), signature)
    if signer != checksummed:
        message = (
            "signature is not by the owner of address: sign exactly "
            f"{link_message(customer_id, checksummed)!r} with personal_sign (EIP-191)"
        )
        raise Unprocessable(
            message,
            errors=[{"location": "body", "field": "signature", "message": message}],
        )
    taken = session.scalars(
        select(LoyaltyWallet).where(LoyaltyWallet.address == checksummed)
    ).first()
    if taken is not None and taken.customer_pk != customer_pk:
        raise Conflict(f"address {checksummed} is already the loyalty address of another customer")
    if live_points:
        raise Conflict(
            f"the customer's loyalty account holds or is owed {live_points} points at its "
            "current address; link a new address once they are redeemed or expired (points "
            "cannot be transferred between holders)",
            points=live_points,
        )
    wallet = customer_address(session, customer_pk)
    now = utcnow()
    if wallet is None:
        wallet = LoyaltyWallet(
            customer_pk=customer_pk,
            address=checksummed,
            hd_index=keyring.index_of(customer_pk) if keyring is not None else None,
            linked_at=now,
            created_at=now,
        )
        session.add(wallet)
    else:
        wallet.address = checksummed
        wallet.linked_at = now
    session.flush()
    return wallet


def _recover(message: str, signature: str) -> str | None:
    try:
        return str(Account.recover_message(encode_defunct(text=message), signature=signature))
    except Exception:
        return None
