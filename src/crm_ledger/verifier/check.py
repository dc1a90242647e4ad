"""The independent verifier: a bundle's bytes and the chain's JSON-RPC, nothing else.

Exports: `BundleCheck`, `ChainFor`, `check_bundle_offline`, `check_bundle_on_chain`,
`verify_bundle` (the offline pass is `verifier.offline`'s, re-exported here).

It imports no database code and asks the service nothing. Offline, for every record: the leaf
input decodes (version 1, its own seq, a known kind); its leaf hash is included in its batch
(by the RFC 9162 audit path, or, when the bundle holds the whole batch, by rebuilding the
batch's tree); the content is the committed document of that record and kind, and
HMAC-SHA256(key, content) is the commitment when the key is in the bundle; each customer's
records link to one another by previous leaf hash. For every batch: its head is SHA-256(previous
head ‖ root ‖ first_seq ‖ count) and consecutive batches chain. On chain, for every batch: the
contract's `batch(id)` holds that range and root, the anchoring transaction emitted that
`BatchAnchored` event in that block, and the block is still canonical.

Example::

    async with connect_read_only(rpc_url, contract, timeout=10) as chain:
        check = await verify_bundle(Path("bundle.jsonl"), chain_for=lambda _: chain,
                                    contract=contract)
    sys.exit(0 if check.ok else 1)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from crm_ledger.verifier.bundle import (
    BundleBatch,
)
from crm_ledger.verifier.chain import AuditChain, ChainFor
from crm_ledger.verifier.offline import BundleCheck, check_bundle_offline
from crm_ledger.verifier.onchain import CheckStep, StepStatus, check_anchoring, check_network

__all__ = [
    "BundleCheck",
    "ChainFor",
    "check_bundle_offline",
    "check_bundle_on_chain",
    "verify_bundle",
]

#: Batches checked on chain at the same time.
CHAIN_CONCURRENCY = 8


async def verify_bundle(
    path: Path,
    *,
    chain_for: ChainFor | None,
    contract: str | None,
    progress: Callable[[int], None] | None = None,
) -> BundleCheck:
    """Verify the bundle at `path` offline, then on chain unless `chain_for` is None.

    `contract` pins the AuditLedger the auditor trusts: a bundle naming another fails. Raises
    `FormatError` for a file that is not a readable bundle and `ChainUnavailable` when the node
    cannot be reached.
    """
    started = time.perf_counter()
    with path.open("rb") as handle:
        check, batches = check_bundle_offline(handle, progress=progress)
    if chain_for is not None:
        await check_bundle_on_chain(check, batches, chain_for=chain_for, contract=contract)
    check.seconds = time.perf_counter() - started
    return check


async def check_bundle_on_chain(
    check: BundleCheck,
    batches: list[BundleBatch],
    *,
    chain_for: ChainFor,
    contract: str | None,
) -> None:
    """Confirm every batch on chain; raises `ChainUnavailable` when the node cannot be reached."""
    by_contract: dict[str, list[BundleBatch]] = {}
    for entry in sorted(batches, key=lambda b: b.batch.id):
        by_contract.setdefault(entry.chain.contract, []).append(entry)
    if contract is None and by_contract:
        check.notes.append(
            "no --contract was given: the bundle's own contract "
            + ", ".join(sorted(by_contract))
            + " was trusted; compare it with the address the ledger's operator publishes"
        )
    # A few batches in flight at once: each check is three round trips to the node.
    in_flight = asyncio.Semaphore(CHAIN_CONCURRENCY)
    for address, entries in by_contract.items():
        chain = chain_for(contract if contract is not None else address)
        network = await check_network(chain, entries[0].chain, expected_contract=contract)
        if network.status != StepStatus.OK:
            check.fail(f"batches {entries[0].batch.id} to {entries[-1].batch.id}: {network.detail}")
            continue
        # The happy path in a few calls: the BatchAnchored events of the blocks the bundle names
        # (the node only returns logs of canonical blocks, from this contract). A batch whose
        # event is not there exactly as claimed is checked step by step, to say what differs.
        first_block = min(entry.chain.block_number for entry in entries)
        last_block = max(entry.chain.block_number for entry in entries)
        events = {e.batch_id: e for e in await chain.batch_events(first_block, last_block)}
        unconfirmed = []
        for entry in entries:
            event = events.get(entry.batch.id)
            batch, where = entry.batch, entry.chain
            anchored = (
                None
                if event is None
                else (
                    event.first_seq,
                    event.count,
                    event.root,
                    event.head,
                    event.tx_hash,
                    event.block_number,
                    event.block_hash,
                )
            )
            claimed = (
                batch.first_seq,
                batch.count,
                batch.root,
                batch.head,
                where.tx_hash,
                where.block_number,
                where.block_hash,
            )
            if anchored == claimed:
                check.batches_on_chain += 1
            else:
                unconfirmed.append(entry)
        results = await asyncio.gather(
            *(_anchoring(in_flight, chain, entry) for entry in unconfirmed)
        )
        for entry, steps in zip(unconfirmed, results, strict=True):
            failed = [step for step in steps if step.status != StepStatus.OK]
            for step in failed:
                check.fail(f"batch {entry.batch.id}: {step.name}: {step.detail}")
            if not failed:
                # Every step held though the events said otherwise a moment before (a reorg
                # between the two reads): confirmed all the same.
                check.batches_on_chain += 1


async def _anchoring(
    in_flight: asyncio.Semaphore, chain: AuditChain, entry: BundleBatch
) -> list[CheckStep]:
    async with in_flight:
        return await check_anchoring(chain, entry.batch, entry.chain)
