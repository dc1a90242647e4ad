"""Audits against a real Anvil: batch roots, counts and head on chain, a batch the journal does
not know, the `verify` command over JSON-RPC (bundle, --since, a pinned contract), a chain reset."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner
from web3 import AsyncWeb3

from crm_ledger.anchoring.anchorer import Anchorer, DeploymentRef
from crm_ledger.audit.chain import read_only_chain
from crm_ledger.audit.export import ledger_digest, open_export
from crm_ledger.audit.ledger import run_ledger_audit
from crm_ledger.audit.report import DiscrepancyKind as Kind
from crm_ledger.chain.client import LedgerChain, make_async_web3
from crm_ledger.chain.deploy import ensure_ledger_deployment
from crm_ledger.chain.node import LocalNode, start_anvil
from crm_ledger.chain.signer import dev_account
from crm_ledger.cli import app
from crm_ledger.verifier.bundle import Scope
from tests.anchoring.fakes import add_records, fast_settings
from tests.audit.fakes import tamper
from tests.chain.conftest import free_port

pytestmark = [pytest.mark.chain, pytest.mark.asyncio]


@dataclass
class AnvilLedger:
    node: LocalNode
    w3: AsyncWeb3[Any]
    anchoring: LedgerChain
    address: str
    engine: Engine
    session_factory: sessionmaker[Session]
    deployment: DeploymentRef
    tmp_path: Path

    @property
    def reader(self) -> LedgerChain:
        return read_only_chain(self.w3, self.address)

    async def anchor(self) -> None:
        anchorer = Anchorer(
            session_factory=self.session_factory,
            chain=self.anchoring,
            deployment=self.deployment,
            settings=fast_settings(self.tmp_path),
        )
        for _ in range(100):
            if not await anchorer.step():
                return
        raise AssertionError("anchorer still busy")


@pytest_asyncio.fixture
async def anvil_ledger(
    engine: Engine, session_factory: sessionmaker[Session], tmp_path: Path
) -> AsyncIterator[AnvilLedger]:
    """3 customers x 4 records anchored in batches of 4 on an Anvil of this test's own."""
    node = start_anvil(port=free_port(), state_path=tmp_path / "anvil" / "state.json")
    w3 = make_async_web3(node.rpc_url, 10.0)
    try:
        unbound = LedgerChain(w3, dev_account(0), None)
        deployment = await ensure_ledger_deployment(session_factory=session_factory, chain=unbound)
        ledger = AnvilLedger(
            node=node,
            w3=w3,
            anchoring=unbound.at(deployment.address),
            address=deployment.address,
            engine=engine,
            session_factory=session_factory,
            deployment=DeploymentRef(
                epoch=deployment.epoch,
                address=deployment.address,
                code_hash=deployment.code_hash,
                block_number=deployment.block_number,
            ),
            tmp_path=tmp_path,
        )
        add_records(session_factory, customers=3, each=4)
        await ledger.anchor()
        yield ledger
    finally:
        await w3.provider.disconnect()
        node.stop()


async def run_cli(*arguments: str, env: dict[str, str] | None = None) -> Any:
    """Run `crm-ledger` in a thread: the commands start event loops of their own."""
    return await asyncio.to_thread(CliRunner().invoke, app, list(arguments), env=env)


async def test_a_clean_ledger_audits_clean_against_anvil(anvil_ledger: AnvilLedger) -> None:
    report = await run_ledger_audit(engine=anvil_ledger.engine, chain=anvil_ledger.reader)
    assert report.clean, report.to_json()
    assert report.records_checked == 12
    assert report.chain["batch_count"] == 3
    assert report.chain["next_seq"] == 12
    assert report.chain["head"] == "0x" + (await anvil_ledger.reader.head()).hex()


async def test_batch_rows_and_unknown_batches_are_checked_against_anvil(
    anvil_ledger: AnvilLedger, database_url: str
) -> None:
    tamper(
        database_url,
        [("UPDATE batches SET root = :r WHERE id = 2", {"r": hashlib.sha256(b"x").digest()})],
    )
    # Someone holding the anchorer's key anchors seqs the journal never had.
    await anvil_ledger.anchoring.send_anchor(12, 2, hashlib.sha256(b"not ours").digest())
    report = await run_ledger_audit(engine=anvil_ledger.engine, chain=anvil_ledger.reader)
    assert report.kinds() == {Kind.BATCH_ROW_ALTERED, Kind.UNKNOWN_BATCH}, report.to_json()
    assert report.affected_seqs() == {12, 13}
    assert {d.batch_id for d in report.discrepancies} == {2, 3}


async def test_the_verify_command_checks_bundles_and_digests_over_json_rpc(
    anvil_ledger: AnvilLedger, tmp_path: Path
) -> None:
    rpc = anvil_ledger.node.rpc_url
    bundle = tmp_path / "ledger.jsonl"
    bundle.write_bytes(
        b"".join(open_export(anvil_ledger.engine, scope=Scope("all"), include_keys=True).lines())
    )
    digest = ledger_digest(anvil_ledger.engine)
    assert digest is not None
    saved = tmp_path / "digest.json"
    saved.write_text(json.dumps(digest.to_json()))

    result = await run_cli("verify", str(bundle), "--rpc", rpc, "--contract", anvil_ledger.address)
    assert result.exit_code == 0, result.output
    assert "3 batches confirmed on chain" in result.output

    other = "0x" + "12" * 20
    result = await run_cli("verify", str(bundle), "--rpc", rpc, "--contract", other)
    assert result.exit_code == 1, result.output
    assert "but the ledger's AuditLedger" in result.output

    # The ledger grows; the saved digest is still extended, a forged one is not.
    add_records(anvil_ledger.session_factory, customers=1, each=5)
    await anvil_ledger.anchor()
    result = await run_cli("verify", "--since", str(saved), "--rpc", rpc)
    assert result.exit_code == 0, result.output
    assert "extends the digest: 2 batches and 5 records since" in result.output
    forged = digest.to_json()
    forged["batch"]["root"] = "0x" + "ab" * 32
    forged["batch"]["head"] = "0x" + hashlib.sha256(b"forged").hexdigest()
    saved.write_text(json.dumps(forged))
    result = await run_cli("verify", "--since", str(saved), "--rpc", rpc)
    assert result.exit_code == 1, result.output
    assert "forged or from another ledger" in result.output

    # A tampered bundle fails over JSON-RPC too.
    lines = bundle.read_bytes().splitlines(keepends=True)
    batch = json.loads(lines[1])
    batch["batch"]["root"] = "0x" + "00" * 31 + "01"
    lines[1] = json.dumps(batch).encode() + b"\n"
    bundle.write_bytes(b"".join(lines))
    result = await run_cli("verify", str(bundle), "--rpc", rpc, "--json")
    assert result.exit_code == 1
    failures = json.loads(result.stdout)["bundle"]["failures"]
    assert any("batch 0: root_on_chain" in failure for failure in failures), failures


async def test_a_chain_reset_is_reported_by_the_audit_and_the_verifier(
    anvil_ledger: AnvilLedger, tmp_path: Path
) -> None:
    bundle = tmp_path / "ledger.jsonl"
    bundle.write_bytes(
        b"".join(open_export(anvil_ledger.engine, scope=Scope("all"), include_keys=True).lines())
    )
    digest = ledger_digest(anvil_ledger.engine)
    assert digest is not None
    saved = tmp_path / "digest.json"
    saved.write_text(json.dumps(digest.to_json()))

    # The node comes back on the same port without its state: a fresh chain.
    port = anvil_ledger.node.port
    anvil_ledger.node.stop()
    fresh = start_anvil(port=port, state_path=None)
    try:
        report = await run_ledger_audit(engine=anvil_ledger.engine, chain=anvil_ledger.reader)
        assert report.kinds() == {Kind.CHAIN_RESET}, report.to_json()
        assert report.affected_seqs() == set()
        result = await run_cli("verify", str(bundle), "--rpc", fresh.rpc_url)
        assert result.exit_code == 1, result.output
        assert "has no contract at" in result.output
        result = await run_cli("verify", "--since", str(saved), "--rpc", fresh.rpc_url)
        assert result.exit_code == 1, result.output
        assert "has no contract at" in result.output
    finally:
        fresh.stop()


async def test_the_audit_command_against_anvil(
    anvil_ledger: AnvilLedger, database_url: str, tmp_path: Path
) -> None:
    settings = ["--rpc", anvil_ledger.node.rpc_url, "--data-dir", str(tmp_path)]
    env = {"CRM_LEDGER_DATABASE_URL": database_url}
    result = await run_cli("audit", *settings, "--json", env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["clean"] is True
    tamper(database_url, [("DELETE FROM records WHERE seq = 7", {})])
    result = await run_cli("audit", *settings, env=env)
    assert result.exit_code == 1, result.output
    assert "deleted_record seq 7" in result.output
