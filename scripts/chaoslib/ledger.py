"""After a scenario: wait for the backlog, then check the journal against the chain (lost,
anchored twice, seq gaps) and fill the scenario's figures."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from sqlalchemy import func, select
from web3 import AsyncWeb3, Web3

from crm_ledger.audit.chain import read_only_chain
from crm_ledger.chain.artifacts import load_artifact
from crm_ledger.chain.client import make_async_web3
from crm_ledger.db.models import Batch, BatchStatus, Deployment, Record
from crm_ledger.db.session import make_engine, make_session_factory
from crm_ledger.errors import LedgerError
from crm_ledger.journal.receipts import build_receipt
from crm_ledger.ledger.receipts import Receipt
from crm_ledger.verifier.record import verify_record

from .harness import WRITE_PATIENCE_SECONDS, Outcome, Service, Writer, wait_until


def settle(database_url: str, timeout: float) -> float:
    """Wait until every record has a seq and every batch is anchored; the seconds it took."""
    engine = make_engine(database_url)

    def settled() -> bool:
        try:
            with engine.connect() as conn:
                pending = conn.scalar(select(func.count()).where(Record.seq.is_(None)))
                unfinished = conn.scalar(
                    select(func.count()).where(Batch.status != BatchStatus.ANCHORED.value)
                )
        except Exception:
            return False
        return pending == 0 and unfinished == 0

    try:
        return wait_until(settled, timeout, "every record anchored")
    finally:
        engine.dispose()


def genesis_hash(rpc_url: str, timeout: float = 90) -> str:
    """The hash of block 0 on the node at `rpc_url`, once it answers (the service acknowledges
    writes before its own Anvil is up)."""
    found: list[str] = []

    def answered() -> bool:
        with contextlib.suppress(Exception):
            found.append(str(Web3(Web3.HTTPProvider(rpc_url)).eth.get_block(0)["hash"].hex()))
        return bool(found)

    wait_until(answered, timeout, f"the node at {rpc_url} answering")
    return found[0]


def check_ledger(database_url: str, rpc_url: str, acknowledged: set[str], outcome: Outcome) -> None:
    """Fill `lost`, `anchored_twice` and `seq_gaps` from the journal and the chain."""
    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            records = session.execute(select(Record.id, Record.seq)).all()
            deployment = session.scalars(
                select(Deployment)
                .where(Deployment.contract == "AuditLedger")
                .order_by(Deployment.epoch.desc())
            ).first()
            assert deployment is not None, "no AuditLedger deployment in the journal"
            seqs = sorted(r.seq for r in records if r.seq is not None)
            outcome.seq_gaps = len(set(range(len(records))) - set(seqs)) + (
                len(seqs) - len(set(seqs))
            )
            known = {r.id for r in records}
            missing = acknowledged - known
            outcome.lost = len(missing)
            outcome.notes += [
                f"acknowledged but not in the journal: {m}" for m in sorted(missing)[:5]
            ]
            contract = Web3(Web3.HTTPProvider(rpc_url)).eth.contract(
                address=deployment.address, abi=load_artifact("AuditLedger").abi
            )
            events = contract.events.BatchAnchored.get_logs(from_block=deployment.block_number)
            covered: dict[int, int] = {}
            for event in events:
                for seq in range(event.args.firstSeq, event.args.firstSeq + event.args.count):
                    covered[seq] = covered.get(seq, 0) + 1
            outcome.anchored_twice = sum(1 for times in covered.values() if times > 1)
            next_seq = contract.functions.nextSeq().call()
            outcome.seq_gaps += len(set(range(next_seq)) - set(covered))
            if next_seq != len(records):
                outcome.notes.append(f"chain nextSeq {next_seq}, journal {len(records)} records")
                outcome.seq_gaps += abs(next_seq - len(records))
            unverified = asyncio.run(
                _unverified(session, rpc_url, deployment.address, acknowledged & known)
            )
            outcome.lost += len(unverified)
            outcome.notes += [f"receipt does not verify: {u}" for u in unverified[:5]]
    finally:
        engine.dispose()


async def _unverified(session: Any, rpc_url: str, address: str, ids: set[str]) -> list[str]:
    """Ids among `ids` whose receipt does not verify against the chain."""
    w3: AsyncWeb3[Any] = make_async_web3(rpc_url, 30)
    failed = []
    try:
        chain = read_only_chain(w3, address)
        ordered = sorted(ids)
        for start in range(0, len(ordered), 500):
            ids_chunk = ordered[start : start + 500]
            rows = session.scalars(select(Record).where(Record.id.in_(ids_chunk))).all()
            for record in rows:
                try:
                    receipt = Receipt.from_json(build_receipt(session, record))
                except LedgerError as exc:
                    failed.append(f"{record.id} ({exc})")
                    continue
                check = await verify_record(
                    receipt=receipt,
                    content=record.content,
                    key=record.customer.key,
                    chain=chain,
                    expected_contract=address,
                )
                if check.verdict != "valid":
                    failed.append(record.id)
                    continue
    finally:
        await w3.provider.disconnect()
    return failed


def finish(
    outcome: Outcome,
    writer: Writer,
    database_url: str,
    rpc_url: str,
    *,
    settle_timeout: float,
    service: Service | None = None,
) -> Outcome:
    """Wait for the backlog, then check the ledger and fill the writer's figures."""
    try:
        settle(database_url, settle_timeout)
    except TimeoutError as exc:
        state = service.readyz() if service is not None else {}
        state.get("chain", {}).pop("indexer", None)
        outcome.notes.append(f"{exc}; /readyz: {json.dumps(state)[:1500]}")
    outcome.acknowledged = len(writer.acknowledged)
    outcome.server_errors += len([e for e in writer.server_errors if not e.startswith("4")])
    outcome.unavailable += writer.unavailable
    outcome.notes += writer.server_errors[:5]
    if writer.abandoned:
        outcome.notes.append(
            f"{writer.abandoned} writes abandoned after {WRITE_PATIENCE_SECONDS} s"
        )
    if writer.refused:
        outcome.notes.append(f"{writer.refused} writes refused with a 4xx")
    check_ledger(database_url, rpc_url, set(writer.acknowledged), outcome)
    return outcome
