"""Fixtures for the chain tests: local nodes on free ports, clients, and an in-process chain.

`anvil` and `hardhat` are started once per test session (each test deploys its own contract on
them); tests that stop, kill or reset a node start their own with `anvil_factory`.
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3
from web3.providers.eth_tester import AsyncEthereumTesterProvider

from crm_ledger.chain.client import LedgerChain, make_async_web3
from crm_ledger.chain.node import LocalNode, start_anvil, start_hardhat
from crm_ledger.chain.signer import dev_account
from crm_ledger.config import Settings

RPC_TIMEOUT_SECONDS = 5.0


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def some_root(label: str) -> bytes:
    """A made-up, non-zero 32-byte batch root."""
    return hashlib.sha256(label.encode()).digest()


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    """Settings with no key configured unless given, whatever the environment holds."""
    values: dict[str, object] = {
        "data_dir": tmp_path,
        "private_key": None,
        "keystore_path": None,
        "keystore_password": None,
        "mnemonic": None,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg, arg-type]


async def deployed_chain(w3: AsyncWeb3[Any], signer: LocalAccount) -> LedgerChain:
    """A fresh AuditLedger (epoch 1) deployed by `signer`, and a client bound to it."""
    unbound = LedgerChain(w3, signer, None)
    deployed = await unbound.deploy_ledger(epoch=1)
    return unbound.at(deployed.address)


@pytest.fixture(scope="session")
def anvil(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNode]:
    """One Anvil for the session, with a state file like the service's."""
    state_path = tmp_path_factory.mktemp("anvil") / "state.json"
    with start_anvil(port=free_port(), state_path=state_path) as node:
        yield node


@pytest.fixture(scope="session")
def hardhat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNode]:
    """One Hardhat node for the session."""
    log_path = tmp_path_factory.mktemp("hardhat") / "hardhat.log"
    with start_hardhat(port=free_port(), log_path=log_path) as node:
        yield node


@pytest.fixture
def anvil_factory(tmp_path: Path) -> Iterator[Callable[..., LocalNode]]:
    """Start Anvils of this test's own (default state file: tmp_path/anvil/state.json)."""
    started: list[LocalNode] = []

    def start(*, port: int | None = None, state_path: Path | None = None) -> LocalNode:
        node = start_anvil(
            port=port if port is not None else free_port(),
            state_path=state_path if state_path is not None else tmp_path / "anvil" / "state.json",
        )
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


@pytest_asyncio.fixture
async def anvil_w3(anvil: LocalNode) -> AsyncIterator[AsyncWeb3[Any]]:
    """An `AsyncWeb3` on the session Anvil."""
    w3 = make_async_web3(anvil.rpc_url, RPC_TIMEOUT_SECONDS)
    yield w3
    await w3.provider.disconnect()


@pytest.fixture(params=["anvil", "hardhat"])
def node(request: pytest.FixtureRequest) -> LocalNode:
    """The session Anvil, then the session Hardhat node: the client must work on both."""
    found: LocalNode = request.getfixturevalue(request.param)
    return found


@pytest_asyncio.fixture
async def ledger(node: LocalNode) -> AsyncIterator[LedgerChain]:
    """A fresh AuditLedger on `node`, deployed and anchored by dev account 0."""
    w3 = make_async_web3(node.rpc_url, RPC_TIMEOUT_SECONDS)
    yield await deployed_chain(w3, dev_account(0))
    await w3.provider.disconnect()


@pytest_asyncio.fixture
async def tester_ledger() -> LedgerChain:
    """A fresh AuditLedger on an in-process eth-tester chain (no node, no JSON-RPC)."""
    provider = AsyncEthereumTesterProvider()
    w3 = AsyncWeb3(provider)
    signer = dev_account(0)
    funded = (await w3.eth.accounts)[0]
    await w3.eth.send_transaction({"from": funded, "to": signer.address, "value": 10**20})
    return await deployed_chain(w3, signer)
