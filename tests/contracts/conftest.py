"""Fixtures for the contract tests: an in-process eth-tester (py-evm) chain and AuditLedgers.

Also the helpers both test modules import from here: deployment from the committed artifacts
and custom-error checks (a conftest, so pytest rewrites their asserts).
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest
from eth_abi import decode, encode
from eth_tester.exceptions import TransactionFailed
from eth_typing import ChecksumAddress
from web3 import EthereumTesterProvider, Web3
from web3.contract import Contract

from crm_ledger.chain.artifacts import load_artifact

DEFAULT_ADMIN_ROLE = bytes(32)
ZERO_ADDRESS = Web3.to_checksum_address("0x" + "00" * 20)
# A gas limit skips eth_estimateGas, which halves the time per transaction on eth-tester; a
# transaction that reverts is then mined with status 0 rather than raising.
GAS_LIMIT = 1_000_000


def deploy_artifact(w3: Web3, name: str, *arguments: Any, sender: ChecksumAddress) -> Contract:
    """Deploy contract `name` from its committed artifact; return it bound to its address."""
    artifact = load_artifact(name)
    factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    tx_hash = factory.constructor(*arguments).transact({"from": sender})
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash)
    return w3.eth.contract(address=receipt["contractAddress"], abi=artifact.abi)


def deploy_audit_ledger(
    w3: Web3,
    *,
    admin: ChecksumAddress,
    anchorer: ChecksumAddress,
    epoch: int = 1,
    previous_ledger: ChecksumAddress = ZERO_ADDRESS,
) -> Contract:
    """Deploy an AuditLedger from its committed artifact and return it bound to its address."""
    return deploy_artifact(w3, "AuditLedger", admin, anchorer, epoch, previous_ledger, sender=admin)


def decode_custom_error(abi: Sequence[dict[str, Any]], data: bytes) -> tuple[str, tuple[Any, ...]]:
    """(error name, arguments) of revert data, using the error definitions in `abi`."""
    for entry in abi:
        if entry["type"] != "error":
            continue
        types = [arg["type"] for arg in entry["inputs"]]
        selector = Web3.keccak(text=f"{entry['name']}({','.join(types)})")[:4]
        if data[:4] == selector:
            return entry["name"], decode(types, data[4:])
    return "<not an error of this ABI>", (data.hex(),)


@contextmanager
def reverts_with(contract: Contract, error_name: str, *args: Any) -> Iterator[None]:
    """Expect the block to revert with custom error `error_name(*args)` of `contract`'s ABI."""
    with pytest.raises(TransactionFailed) as caught:
        yield
    # eth-tester reports revert data as the repr of the bytes: "execution reverted: b'...'".
    message = str(caught.value.args[0])
    assert message.startswith("execution reverted: b"), message
    data = ast.literal_eval(message.removeprefix("execution reverted: "))
    (entry,) = [e for e in contract.abi if e["type"] == "error" and e["name"] == error_name]
    types = [arg["type"] for arg in entry["inputs"]]
    assert decode_custom_error(contract.abi, data) == (
        error_name,
        decode(types, encode(types, args)),
    )


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
