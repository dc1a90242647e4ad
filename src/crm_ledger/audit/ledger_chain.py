"""What the chain says about the journal's AuditLedger, for the ledger audit (`audit.ledger`).

Exports: `ChainView`, `read_chain`, `reset_reason`.

`read_chain` (async) takes whether the deployment is still there, every `BatchAnchored` event
(first seq, count, root, head, transaction, block), `batchCount()`, `head()` and `nextSeq()`,
and checks that the events chain into the head the contract reports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from crm_ledger.audit.snapshot import DeploymentRecord
from crm_ledger.ledger import merkle
from crm_ledger.verifier.chain import EMPTY_CODE_HASH, AuditChain, BatchAnchoredEvent, BatchOnChain

__all__ = ["ChainView", "read_chain", "reset_reason"]


@dataclass
class ChainView:
    """What the chain says about the journal's AuditLedger."""

    deployment: DeploymentRecord | None
    #: Why the deployment is gone from the chain, or None while it is there.
    reset: str | None = None
    batches: list[BatchAnchoredEvent] = field(default_factory=list)
    batch_count: int = 0
    head: bytes = merkle.ZERO_HASH
    next_seq: int = 0
    #: Ways the chain's own data does not add up.
    problems: list[str] = field(default_factory=list)
    #: Asks the chain, from the audit's thread, for a batch anchored after this view was read
    #: (the service keeps anchoring while an audit runs); None: no chain to ask.
    late_batch: Callable[[int], BatchOnChain | None] | None = field(default=None, repr=False)

    def summary(self) -> dict[str, object]:
        """The chain part of a report."""
        deployment = self.deployment
        return {
            "chain_id": deployment.chain_id if deployment else None,
            "contract": deployment.address if deployment else None,
            "epoch": deployment.epoch if deployment else None,
            "reset": self.reset is not None,
            "batch_count": self.batch_count,
            "next_seq": self.next_seq,
            "head": "0x" + self.head.hex(),
        }


#: How often `read_chain` reads again when a batch was anchored while it read.
_STABLE_READ_TRIES = 5


async def read_chain(chain: AuditChain | None, deployment: DeploymentRecord | None) -> ChainView:
    """Everything the audit compares the journal with, read from the chain.

    `chain` is bound to `deployment.address`; with no deployment recorded nothing was anchored
    and the chain is not asked. Raises `ChainUnavailable` when the node cannot be reached.
    """
    view = ChainView(deployment=deployment)
    if deployment is None or chain is None:
        return view
    view.reset = await reset_reason(chain, deployment)
    if view.reset is not None:
        return view
    # The service anchors while we read: a batch landing between the reads below would make
    # the chain look inconsistent with itself. Read until no batch landed meanwhile.
    for _ in range(_STABLE_READ_TRIES):
        before = await chain.batch_count()
        events = await chain.batch_events(deployment.block_number)
        view.head = await chain.head()
        view.next_seq = await chain.next_seq()
        view.batch_count = await chain.batch_count()
        if view.batch_count == before:
            break
    view.batches = sorted(events, key=lambda e: e.batch_id)
    view.problems = _chain_problems(view)
    return view


async def reset_reason(chain: AuditChain, deployment: DeploymentRecord) -> str | None:
    """Why `deployment` is no longer on the chain (reset, replaced), or None while it is."""
    chain_id = await chain.chain_id()
    if chain_id != deployment.chain_id:
        return (
            f"the node is chain {chain_id}, but AuditLedger epoch {deployment.epoch} was "
            f"deployed on chain {deployment.chain_id}"
        )
    code_hash = await chain.code_hash(deployment.address)
    if code_hash != deployment.code_hash:
        what = "no code" if code_hash == EMPTY_CODE_HASH else "other code"
        return (
            f"the chain has {what} at {deployment.address}, where AuditLedger epoch "
            f"{deployment.epoch} was deployed: the chain was reset or replaced"
        )
    genesis = await chain.genesis_hash()
    if genesis != deployment.genesis_hash:
        return (
            f"the chain's genesis block is 0x{genesis.hex()}, not 0x"
            f"{deployment.genesis_hash.hex()} as when AuditLedger epoch {deployment.epoch} was "
            "deployed: the chain was replaced"
        )
    return None


def _chain_problems(view: ChainView) -> list[str]:
    problems = []
    head = merkle.ZERO_HASH
    end = 0
    for expected_id, batch in enumerate(view.batches):
        if batch.batch_id != expected_id:
            problems.append(
                f"BatchAnchored events skip from batch {expected_id - 1} to {batch.batch_id}"
            )
            break
        if batch.first_seq != end:
            problems.append(
                f"batch {batch.batch_id} starts at seq {batch.first_seq}, the previous ended "
                f"at {end}"
            )
        head = merkle.next_head(head, batch.root, batch.first_seq, batch.count)
        if batch.head != head:
            problems.append(
                f"batch {batch.batch_id}'s event head 0x{batch.head.hex()} is not "
                f"SHA-256(previous head ‖ root ‖ first_seq ‖ count) = 0x{head.hex()}"
            )
            head = batch.head
        end = batch.first_seq + batch.count
    if view.batch_count != len(view.batches):
        problems.append(
            f"batchCount() is {view.batch_count} but {len(view.batches)} BatchAnchored events "
            "were found"
        )
    if view.head != head:
        problems.append(f"head() is 0x{view.head.hex()}, the events chain to 0x{head.hex()}")
    if view.next_seq != end:
        problems.append(f"nextSeq() is {view.next_seq}, the events end at seq {end}")
    return problems
