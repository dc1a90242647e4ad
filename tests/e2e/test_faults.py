"""Nothing acknowledged is lost: the service killed -9 under load, the chain down, the chain
rolled back. Each test ends by checking the journal against the chain, batch by batch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_utils.crypto import keccak
from sqlalchemy import select
from sqlalchemy.orm import Session
from web3 import Web3
from web3.exceptions import Web3Exception

from crm_ledger.app import create_app
from crm_ledger.chain.artifacts import load_artifact
from crm_ledger.chain.deploy import LEDGER_CONTRACT
from crm_ledger.chain.node import LocalNode
from crm_ledger.db.models import Batch, BatchStatus, Deployment, Record
from crm_ledger.db.session import make_engine, make_session_factory, upgrade_database
from crm_ledger.journal.keys import Role, create_api_key
from tests.api.helpers import interaction
from tests.chain.conftest import anvil_factory  # noqa: F401  (fixture)
from tests.e2e.conftest import TestClient, free_port, service_settings
from tests.waiting import wait_for

pytestmark = pytest.mark.chain


def assert_journal_matches_chain(
    database_url: str, rpc_url: str, acknowledged: set[str], node: LocalNode | None = None
) -> None:
    """Every acknowledged record anchored once; seqs contiguous; every batch as on chain.

    A contract call that fails reports what the chain holds at the AuditLedger's address (and
    `node`'s log tail when given) instead of the bare error."""
    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            records = session.execute(select(Record.id, Record.seq).order_by(Record.seq)).all()
            batches = session.scalars(select(Batch).order_by(Batch.id)).all()
            deployment = ledger_deployment(session)
    finally:
        engine.dispose()
    assert acknowledged <= {r.id for r in records}
    assert [r.seq for r in records] == list(range(len(records)))
    assert deployment is not None
    w3 = Web3(Web3.HTTPProvider(rpc_url))
    contract = w3.eth.contract(address=deployment.address, abi=load_artifact("AuditLedger").abi)
    try:
        assert contract.functions.nextSeq().call() == len(records)
        assert contract.functions.batchCount().call() == len(batches)
        for batch in batches:
            assert batch.status == BatchStatus.ANCHORED.value
            assert contract.functions.batch(batch.id).call() == [
                batch.first_seq,
                batch.count,
                batch.root,
            ]
        assert contract.functions.head().call() == batches[-1].head
    except Web3Exception as exc:
        raise AssertionError(f"{exc!r}; {chain_evidence(w3, deployment, node)}") from exc


def ledger_deployment(session: Session) -> Deployment | None:
    """The latest AuditLedger deployment. The LoyaltyToken's row is epoch 1 too: unfiltered,
    the token's row came first whenever the loyalty worker deployed before the anchorer (the CI
    flake: nextSeq() "reverted" on the token's address)."""
    return session.scalars(
        select(Deployment)
        .where(Deployment.contract == LEDGER_CONTRACT)
        .order_by(Deployment.epoch.desc())
    ).first()


def test_the_ledger_deployment_is_found_when_the_token_was_deployed_first(
    database_url: str,
) -> None:
    engine = make_engine(database_url)
    upgrade_database(engine)
    try:
        with make_session_factory(engine).begin() as session:
            for contract, address in (
                ("LoyaltyToken", "0x" + "11" * 20),
                (LEDGER_CONTRACT, "0x" + "22" * 20),
            ):
                session.add(
                    Deployment(
                        contract=contract,
                        epoch=1,
                        chain_id=31337,
                        genesis_hash=bytes(32),
                        address=address,
                        code_hash=bytes(32),
                        tx_hash=bytes(32),
                        block_number=1,
                    )
                )
        with make_session_factory(engine)() as session:
            found = ledger_deployment(session)
            assert found is not None
            assert (found.contract, found.address) == (LEDGER_CONTRACT, "0x" + "22" * 20)
    finally:
        engine.dispose()


def chain_evidence(w3: Web3, deployment: Deployment, node: LocalNode | None) -> str:
    """What the chain holds where `deployment` says the AuditLedger is, and the node's log."""
    code = bytes(w3.eth.get_code(Web3.to_checksum_address(deployment.address)))
    genesis = bytes(w3.eth.get_block(0)["hash"])
    evidence = (
        f"at {deployment.address}: {len(code)} bytes of code, hash {keccak(code).hex()} "
        f"(AuditLedger epoch {deployment.epoch}: {deployment.code_hash.hex()}); genesis "
        f"{genesis.hex()} (deployed on {deployment.genesis_hash.hex()}); block "
        f"{w3.eth.block_number} (deployed in {deployment.block_number}); {w3.client_version}"
    )
    if node is not None:
        evidence += f"; node pid {node.pid}, running {node.is_running()}, log:\n{node.log_tail()}"
    return evidence


class Load:
    """A client thread POSTing interactions; remembers every id answered 201."""

    def __init__(self, base_url: str, key: str, customer: str) -> None:
        self.client = httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=5
        )
        self.customer = customer
        self.acknowledged: set[str] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self.stop.is_set() and n < 5000:
            n += 1
            try:
                answer = self.client.post(
                    "/v1/interactions", json=interaction(self.customer, details={"n": n})
                )
            except httpx.HTTPError:
                time.sleep(0.02)  # the service is down: a real client retries later
                continue
            assert answer.status_code == 201, answer.text
            self.acknowledged.add(answer.json()["id"])

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        self.client.close()


def start_service(
    tmp_path: Path, database_url: str, rpc_url: str, port: int
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "CRM_LEDGER_DATA_DIR": str(tmp_path),
        "CRM_LEDGER_DATABASE_URL": database_url,
        "CRM_LEDGER_RPC_URL": rpc_url,
        "CRM_LEDGER_BATCH_MAX_AGE_SECONDS": "0.05",
        "CRM_LEDGER_ANCHOR_RETRY_MAX_SECONDS": "0.5",
    }
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "crm-ledger"),
            "serve",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
    )
    wait_for(lambda: _answers(f"http://127.0.0.1:{port}/healthz"), 60)
    return process


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_service_killed_mid_load_three_times_loses_and_duplicates_nothing(
    tmp_path: Path,
    database_url: str,
    anvil_factory: Callable[..., LocalNode],  # noqa: F811
) -> None:
    chain = anvil_factory(state_path=None)
    engine = make_engine(database_url)
    upgrade_database(engine)
    with make_session_factory(engine).begin() as session:
        key = create_api_key(session, role=Role.ADMIN, label="fault test")
    engine.dispose()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = start_service(tmp_path, database_url, chain.rpc_url, port)
    customer = httpx.post(
        f"{base}/v1/customers",
        json={"name": "Grace Hopper", "email": "grace@example.com"},
        headers={"Authorization": f"Bearer {key}"},
    ).json()["id"]
    try:
        with Load(base, key, customer) as load:
            for kill_after in (40, 120, 200):
                wait_for(lambda n=kill_after: len(load.acknowledged) >= n, 60)
                process.send_signal(signal.SIGKILL)
                process.wait()
                process = start_service(tmp_path, database_url, chain.rpc_url, port)
            wait_for(lambda: len(load.acknowledged) >= 260, 60)
        acknowledged = set(load.acknowledged)

        def all_anchored() -> bool:
            answers = httpx.get(f"{base}/readyz").json()
            return bool(answers["anchoring"]["pending_records"] == 0)

        wait_for(all_anchored, 60)
        time.sleep(0.5)  # let the last batch's location be recorded
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert_journal_matches_chain(database_url, chain.rpc_url, acknowledged)


@pytest.fixture
def in_process_service(
    tmp_path: Path,
    database_url: str,
    anvil_factory: Callable[..., LocalNode],  # noqa: F811
) -> Iterator[tuple[Any, LocalNode, Callable[[], LocalNode]]]:
    """The service in this process against an Anvil of its own that the test may stop."""
    port = free_port()
    state = tmp_path / "chain" / "state.json"
    chain = anvil_factory(port=port, state_path=state)
    app = create_app(service_settings(tmp_path, database_url, chain.rpc_url))
    with TestClient(app) as client:
        wait_for(lambda: client.get("/readyz").json()["chain"]["state"] == "running", 60)
        with app.state.runtime.session_factory.begin() as session:
            client.headers["Authorization"] = "Bearer " + create_api_key(
                session, role=Role.ADMIN, label="e2e"
            )
        yield client, chain, lambda: anvil_factory(port=port, state_path=state)


def post_interactions(client: Any, customer: str, n: int) -> set[str]:
    ids = set()
    for i in range(n):
        answer = client.post("/v1/interactions", json=interaction(customer, details={"i": i}))
        assert answer.status_code == 201, answer.text
        ids.add(answer.json()["id"])
    return ids


def pending(client: Any) -> int:
    return int(client.get("/readyz").json()["anchoring"]["pending_records"])


def test_chain_down_writes_keep_succeeding_and_the_backlog_is_anchored_on_return(
    in_process_service: tuple[Any, LocalNode, Callable[[], LocalNode]], database_url: str
) -> None:
    client, chain, restart_chain = in_process_service
    customer = client.post(
        "/v1/customers", json={"name": "Ada", "email": "ada@example.com"}
    ).json()["id"]
    acknowledged = post_interactions(client, customer, 5)
    wait_for(lambda: pending(client) == 0, 30)
    chain.stop()
    acknowledged |= post_interactions(client, customer, 20)
    wait_for(lambda: client.get("/readyz").json()["chain"]["state"] == "backing_off", 30)
    assert pending(client) > 0
    chain = restart_chain()
    wait_for(lambda: pending(client) == 0, 60)
    wait_for(lambda: client.get("/readyz").json()["chain"]["state"] == "running", 30)
    time.sleep(0.3)
    assert_journal_matches_chain(database_url, chain.rpc_url, acknowledged, chain)


def test_chain_rolled_back_batches_are_anchored_again(
    in_process_service: tuple[Any, LocalNode, Callable[[], LocalNode]], database_url: str
) -> None:
    client, chain, _ = in_process_service
    w3 = Web3(Web3.HTTPProvider(chain.rpc_url))
    customer = client.post(
        "/v1/customers", json={"name": "Ada", "email": "ada@example.com"}
    ).json()["id"]
    acknowledged = post_interactions(client, customer, 3)
    wait_for(lambda: pending(client) == 0, 30)
    time.sleep(0.3)
    snapshot = w3.provider.make_request("evm_snapshot", [])["result"]  # type: ignore[arg-type]
    later = post_interactions(client, customer, 10)
    acknowledged |= later
    wait_for(lambda: pending(client) == 0, 30)
    time.sleep(0.3)
    before = {rid: client.get(f"/v1/records/{rid}/receipt").json() for rid in later}
    # A deep reorg: every block since the snapshot disappears, anchors included.
    assert w3.provider.make_request("evm_revert", [snapshot])["result"]  # type: ignore[arg-type]
    wait_for(lambda: client.get("/readyz").json()["chain"].get("rollbacks_detected", 0) >= 1, 30)
    wait_for(
        lambda: all(client.get(f"/v1/records/{rid}/receipt").status_code == 200 for rid in later),
        30,
    )
    time.sleep(0.3)
    assert_journal_matches_chain(database_url, chain.rpc_url, acknowledged)
    for rid in later:
        after = client.get(f"/v1/records/{rid}/receipt").json()
        # Same seq, leaf, root and head; a new transaction carries the batch.
        assert {k: after[k] for k in ("seq", "leaf_hash", "audit_path")} == {
            k: before[rid][k] for k in ("seq", "leaf_hash", "audit_path")
        }
        assert after["batch"]["root"] == before[rid]["batch"]["root"]
        assert after["batch"]["head"] == before[rid]["batch"]["head"]
        receipt = w3.eth.get_transaction_receipt(after["chain"]["tx_hash"])
        assert receipt["blockHash"].to_0x_hex() == after["chain"]["block_hash"]


def test_each_chain_worker_keeps_its_own_state(
    in_process_service: tuple[Any, LocalNode, Callable[[], LocalNode]],
) -> None:
    """The anchorer, the indexer and loyalty are peers: the chain down backs off each on its
    own; the anchorer halted (its contract looks replaced) stops neither the indexer nor
    loyalty, which go on issuing points and indexing them."""
    client, chain, restart_chain = in_process_service
    runtime = client.app.state.runtime

    def states() -> dict[str, str]:
        section = client.get("/readyz").json()["chain"]
        return {
            "anchorer": section["state"],
            "indexer": section["indexer"]["state"],
            "loyalty": section["loyalty"]["state"],
        }

    wait_for(lambda: set(states().values()) == {"running"}, 60)
    chain.stop()
    wait_for(lambda: set(states().values()) == {"backing_off"}, 30)
    section = client.get("/readyz").json()["chain"]
    for worker in (section, section["indexer"], section["loyalty"]):
        assert worker["failures_in_a_row"] >= 1 and worker["message"], section
    restart_chain()
    wait_for(lambda: set(states().values()) == {"running"}, 60)

    anchoring = runtime.anchoring
    assert anchoring is not None and anchoring.anchorer is not None
    anchorer = anchoring.anchorer
    anchorer.deployment = replace(anchorer.deployment, code_hash=b"\x01" * 32)
    wait_for(lambda: states()["anchorer"] == "halted", 30)
    assert client.get("/readyz").status_code == 503

    campaign = client.post("/v1/campaigns", json={"name": "Peers", "budget": 100})
    assert campaign.status_code == 201, campaign.text
    customer = client.post(
        "/v1/customers", json={"name": "Ada", "email": "ada@example.com"}
    ).json()["id"]
    indexed_before = client.get("/readyz").json()["chain"]["indexer"]["events_indexed"]
    award = client.post(
        f"/v1/campaigns/{campaign.json()['id']}/awards",
        json={"points": 5, "customer_ids": [customer]},
    )
    assert award.status_code == 202, award.text
    wait_for(
        lambda: client.get(f"/v1/customers/{customer}/loyalty").json().get("chain_balance") == 5,
        60,
    )
    wait_for(
        lambda: client.get("/readyz").json()["chain"]["indexer"]["events_indexed"] > indexed_before,
        60,
    )
    assert states() == {"anchorer": "halted", "indexer": "running", "loyalty": "running"}
