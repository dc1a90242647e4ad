"""AuditLedger deployments: deploy once, record where, notice when the chain lost it.

Exports: `ensure_ledger_deployment`, `verify_deployment`, `recover_new_epoch`,
`LEDGER_CONTRACT`; for every contract the service deploys (the LoyaltyToken's too):
`latest_deployment`, `lock_and_read_latest`, `deployment_row`.

Each deployment is a row in `deployments` together with what the chain looked like then: chain
id, genesis hash, the code hash at the address. A chain that no longer matches (a dev node
restarted without its state, another chain behind the same URL) raises `ChainReset`, and only
an explicit `recover_new_epoch` moves the ledger on: it deploys epoch N+1, which names epoch N's
address as its `previousLedger`, and puts every batch back to `cut` so the anchorer re-anchors
the whole journal, in order, with the same seqs and roots.

Deploying holds a lock from before the "is there a deployment?" read until the row is committed:
`pg_advisory_xact_lock` on PostgreSQL, the write lock of SQLite's `BEGIN IMMEDIATE` (taken by
the engine) on SQLite. Two processes starting at once therefore deploy once. If a process dies
after the deployment transaction was sent and before the row is committed, the contract it
deployed is simply never used; the next start deploys again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Protocol

from sqlalchemy import Select, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.chain.client import EMPTY_CODE_HASH, LedgerChain, LedgerDeployment
from crm_ledger.chain.contract import ContractClient
from crm_ledger.db import outbox
from crm_ledger.db.models import Batch, BatchStatus, Deployment
from crm_ledger.errors import ChainError, ChainReset
from crm_ledger.ledger.hexcodec import hex0x

__all__ = [
    "LEDGER_CONTRACT",
    "deployment_row",
    "ensure_ledger_deployment",
    "latest_deployment",
    "lock_and_read_latest",
    "recover_new_epoch",
    "verify_deployment",
]

log = logging.getLogger(__name__)

LEDGER_CONTRACT = "AuditLedger"
FIRST_EPOCH = 1
_NOTHING_LOST = "Anchoring is stopped; nothing is lost — the journal still holds every record."


async def ensure_ledger_deployment(
    *,
    session_factory: sessionmaker[Session],
    chain: LedgerChain,
    receipt_timeout: float = 60.0,
) -> Deployment:
    """The current AuditLedger deployment, checked against the chain; deploys epoch 1 if none.

    Idempotent: once recorded, the same row comes back and nothing is sent. Raises
    `ChainReset` when the recorded deployment is no longer on the chain. Bind the client to it
    with `chain.at(deployment.address)`.
    """
    # The usual case, a recorded deployment, is checked outside any lock: on SQLite the lock is
    # the database's write lock, and a slow node must not hold up the journal's writers.
    current = await asyncio.to_thread(latest_deployment, session_factory, LEDGER_CONTRACT)
    if current is None:
        current = await _deploy_first_epoch(session_factory, chain, receipt_timeout)
    await verify_deployment(chain, current)
    return current


async def _deploy_first_epoch(
    session_factory: sessionmaker[Session], chain: LedgerChain, receipt_timeout: float
) -> Deployment:
    """Deploy and record epoch 1, unless another process did while this one waited."""
    session = session_factory()
    try:
        recorded = await lock_and_read_latest(session, LEDGER_CONTRACT)
        if recorded is not None:
            await asyncio.to_thread(session.commit)
            return recorded
        deployed = await chain.deploy_ledger(epoch=FIRST_EPOCH, receipt_timeout=receipt_timeout)
        row = await _record(session, chain, deployed, epoch=FIRST_EPOCH)
        await asyncio.to_thread(session.commit)
    finally:
        await asyncio.to_thread(session.close)
    log.info(
        "deployed AuditLedger epoch %d at %s on chain %d (block %d)",
        row.epoch,
        row.address,
        row.chain_id,
        row.block_number,
    )
    return row


async def verify_deployment(chain: LedgerChain, deployment: Deployment) -> None:
    """Raise `ChainReset` unless the chain still has the same id, genesis and contract code."""
    chain_id = await chain.chain_id()
    next_epoch = deployment.epoch + 1
    recover = (
        f"Run `crm-ledger chain recover` to open ledger epoch {next_epoch} on this chain and "
        "re-anchor the journal."
    )
    if chain_id != deployment.chain_id:
        raise ChainReset(
            f"the node at {chain.rpc_url} is chain {chain_id}, but AuditLedger epoch "
            f"{deployment.epoch} was deployed at {deployment.address} on chain "
            f"{deployment.chain_id}: the URL now leads to a different chain. {_NOTHING_LOST} "
            f"Point the service back at chain {deployment.chain_id}, or, if the move is "
            f"deliberate, run `crm-ledger chain recover` to open ledger epoch {next_epoch} on "
            f"chain {chain_id} and re-anchor the journal.",
            expected=f"chain id {deployment.chain_id}",
            found=f"chain id {chain_id}",
        )
    genesis = await chain.genesis_hash()
    code_hash = await chain.code_hash(deployment.address)
    if code_hash == EMPTY_CODE_HASH:
        problem = f"has no AuditLedger code at {deployment.address}"
        expected, found = f"code {hex0x(deployment.code_hash)}", "no code"
    elif code_hash != deployment.code_hash:
        problem = (
            f"has other code at {deployment.address} than the AuditLedger epoch "
            f"{deployment.epoch} deployed there (code hash {_short(deployment.code_hash)} "
            f"then, {_short(code_hash)} now)"
        )
        expected, found = f"code {hex0x(deployment.code_hash)}", f"code {hex0x(code_hash)}"
    elif genesis != deployment.genesis_hash:
        # Same deployer, same nonce, same code: a fresh dev chain rebuilds the address, but
        # not the ledger's history.
        problem = (
            f"is not the chain AuditLedger epoch {deployment.epoch} at {deployment.address} "
            "was deployed on"
        )
        expected, found = f"genesis {hex0x(deployment.genesis_hash)}", f"genesis {hex0x(genesis)}"
    else:
        return
    if genesis != deployment.genesis_hash:
        cause = (
            "the chain was reset or replaced since deployment (genesis "
            f"{_short(deployment.genesis_hash)} then, {_short(genesis)} now)"
        )
    else:
        cause = (
            f"the chain was rolled back past the deployment (same genesis {_short(genesis)}; "
            f"deployed in block {deployment.block_number}, head now {await chain.block_number()})"
        )
    raise ChainReset(
        f"chain {chain_id} at {chain.rpc_url} {problem}: {cause}. {_NOTHING_LOST} {recover}",
        expected=expected,
        found=found,
    )


async def recover_new_epoch(
    *,
    session_factory: sessionmaker[Session],
    chain: LedgerChain,
    force: bool = False,
    receipt_timeout: float = 60.0,
) -> Deployment:
    """Open ledger epoch N+1 after a chain reset and queue the whole journal for re-anchoring.

    Deploys AuditLedger epoch N+1 with `previousLedger` = epoch N's address, records it, and
    resets every batch to `cut` (no epoch, transaction or block), all in one database
    transaction. Refused with `ChainError` unless epoch N fails `verify_deployment` with
    `ChainReset`; `force` skips that check (tests). Run it while the anchorer is halted.
    """
    session = session_factory()
    try:
        current = await lock_and_read_latest(session, LEDGER_CONTRACT)
        if current is None:
            raise ChainError(
                "nothing to recover: no AuditLedger deployment is recorded; starting the "
                "service deploys epoch 1"
            )
        if not force:
            await _require_reset(chain, current)
        epoch = current.epoch + 1
        deployed = await chain.deploy_ledger(
            epoch=epoch, previous_ledger=current.address, receipt_timeout=receipt_timeout
        )
        row = await _record(session, chain, deployed, epoch=epoch)
        requeued = await asyncio.to_thread(_requeue_all_batches, session)
        await asyncio.to_thread(session.commit)
    finally:
        await asyncio.to_thread(session.close)
    log.warning(
        "opened AuditLedger epoch %d at %s on chain %d (previous ledger %s); %d batches queued "
        "for re-anchoring",
        row.epoch,
        row.address,
        row.chain_id,
        current.address,
        requeued,
    )
    return row


async def _require_reset(chain: LedgerChain, current: Deployment) -> None:
    try:
        await verify_deployment(chain, current)
    except ChainReset:
        return
    raise ChainError(
        f"AuditLedger epoch {current.epoch} at {current.address} on chain {current.chain_id} "
        f"is intact at {chain.rpc_url}: recovery refused. `crm-ledger chain recover` only opens "
        "a new epoch after the chain was reset or replaced."
    )


class Deployed(Protocol):
    """A contract just deployed (`LedgerDeployment`, the loyalty token's `TokenDeployment`)."""

    @property
    def address(self) -> str: ...
    @property
    def code_hash(self) -> bytes: ...
    @property
    def tx_hash(self) -> bytes: ...
    @property
    def block_number(self) -> int: ...


def _latest(contract: str) -> Select[tuple[Deployment]]:
    return (
        select(Deployment)
        .where(Deployment.contract == contract)
        .order_by(Deployment.epoch.desc())
        .limit(1)
    )


def latest_deployment(session_factory: sessionmaker[Session], contract: str) -> Deployment | None:
    """The latest recorded deployment of `contract` (read without the deploy lock)."""
    with session_factory() as session:
        return session.scalars(_latest(contract)).first()


def deploy_lock_key(contract: str) -> int:
    """The pg_advisory_xact_lock key shared by every process deploying `contract`."""
    digest = hashlib.sha256(f"crm-ledger: deploy {contract}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def lock_and_read_latest(session: Session, contract: str) -> Deployment | None:
    """Start the session's transaction under `contract`'s deploy lock; its latest row."""

    def locked_read() -> Deployment | None:
        if session.get_bind().dialect.name == "postgresql":
            key = deploy_lock_key(contract)
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
        return session.scalars(_latest(contract)).first()

    # The lock may be held by another process for as long as its deployment takes: wait in a
    # thread, not on the event loop.
    return await asyncio.to_thread(locked_read)


async def deployment_row(
    client: ContractClient,
    deployed: Deployed,
    *,
    contract: str,
    epoch: int,
) -> Deployment:
    """The `deployments` row of a contract just deployed, with what the chain looks like now
    (its id and genesis hash), to notice later when it lost the contract."""
    return Deployment(
        contract=contract,
        epoch=epoch,
        chain_id=await client.chain_id(),
        genesis_hash=await client.genesis_hash(),
        address=deployed.address,
        code_hash=deployed.code_hash,
        tx_hash=deployed.tx_hash,
        block_number=deployed.block_number,
    )


async def _record(
    session: Session, chain: LedgerChain, deployed: LedgerDeployment, *, epoch: int
) -> Deployment:
    row = await deployment_row(chain, deployed, contract=LEDGER_CONTRACT, epoch=epoch)
    session.add(row)
    await asyncio.to_thread(session.flush)
    return row


def _requeue_all_batches(session: Session) -> int:
    result = session.execute(
        update(Batch).values(
            status=BatchStatus.CUT.value, epoch=None, anchored_at=None, **outbox.UNSENT
        )
    )
    return int(getattr(result, "rowcount", 0))


def _short(value: bytes) -> str:
    return f"0x{value[:4].hex()}…"
