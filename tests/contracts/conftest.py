"""Fixtures for the contract tests: an in-process eth-tester (py-evm) chain and AuditLedgers."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from eth_typing import ChecksumAddress
from web3 import EthereumTesterProvider, Web3
from web3.contract import Contract

from crm_ledger.chain.artifacts import load_artifact

ZERO_ADDRESS = Web3.to_checksum_address("0x" + "00" * 20)


def deploy_audit_ledger(
    w3: Web3,
    *,
    admin: ChecksumAddress,
    anchorer: ChecksumAddress,
    epoch: int = 1,
    previous_ledger: ChecksumAddress = ZERO_ADDRESS,
) -> Contract:
    """Deploy an AuditLedger from its committed artifact and return it bound to its address."""
    artifact = load_artifact("AuditLedger")
    factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    tx_hash = factory.constructor(admin, anchorer, epoch, previous_ledger).transact({"from": admin})
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash)
    return w3.eth.contract(address=receipt["contractAddress"], abi=artifact.abi)


@pytest.fixture(scope="session")
def deploy_ledger() -> Callable[..., Contract]:
    """`deploy_audit_ledger(w3, *, admin, anchorer, epoch=1, previous_ledger=ZERO_ADDRESS)`."""
    return deploy_audit_ledger


@pytest.fixture
def w3() -> Web3:
    """A fresh in-process chain per test (creating one takes milliseconds)."""
    return Web3(EthereumTesterProvider())


@pytest.fixture
def admin(w3: Web3) -> ChecksumAddress:
    """accounts[0]: holds DEFAULT_ADMIN_ROLE on `ledger`."""
    return w3.eth.accounts[0]


@pytest.fixture
def anchorer(w3: Web3) -> ChecksumAddress:
    """accounts[1]: holds ANCHORER_ROLE on `ledger`."""
    return w3.eth.accounts[1]


@pytest.fixture
def outsider(w3: Web3) -> ChecksumAddress:
    """accounts[2]: holds no role."""
    return w3.eth.accounts[2]


@pytest.fixture
def ledger(w3: Web3, admin: ChecksumAddress, anchorer: ChecksumAddress) -> Contract:
    """An empty epoch-1 AuditLedger."""
    return deploy_audit_ledger(w3, admin=admin, anchorer=anchorer)
