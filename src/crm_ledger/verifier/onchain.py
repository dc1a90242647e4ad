"""Step 7 of checking a receipt: is the batch on chain, where the receipt says?

Exports: `CheckStep`, `StepStatus`, `check_network`, `check_anchoring`.

Used by the record check of the API and by the offline verifier; imports no database code.
Every step compares what the chain answers over JSON-RPC with what the receipt (or bundle)
claims: `root_on_chain` (the contract's `batch(id)`), `transaction` (the anchoring
transaction's receipt and its `BatchAnchored` event, from the expected contract) and `block`
(that block is still on the canonical chain).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from crm_ledger.errors import AnchorRejected, ChainError, ChainUnavailable
from crm_ledger.ledger.hexcodec import hex0x
from crm_ledger.ledger.receipts import BatchRef, ChainRef, Step
from crm_ledger.verifier.chain import EMPTY_CODE_HASH, AuditChain


class StepStatus(enum.StrEnum):
    """How a check went: held, did not hold, or could not be made."""

    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class CheckStep:
    """One named check, its status and what was compared."""

    name: str
    status: StepStatus
    detail: str

    @classmethod
    def of(cls, step: Step) -> CheckStep:
        """From a `ledger.receipts.Step`."""
        return cls(step.name, StepStatus.OK if step.ok else StepStatus.FAILED, step.detail)

    def to_json(self) -> dict[str, Any]:
        """`{"name", "status", "detail"}`."""
        return {"name": self.name, "status": self.status.value, "detail": self.detail}


async def check_network(
    chain: AuditChain, where: ChainRef, *, expected_contract: str | None
) -> CheckStep:
    """The node is the receipt's chain and the receipt names the contract the auditor expects."""
    chain_id = await chain.chain_id()
    if chain_id != where.chain_id:
        return CheckStep(
            "network",
            StepStatus.FAILED,
            f"the node is chain {chain_id}, the receipt was anchored on chain {where.chain_id}",
        )
    if expected_contract is not None and where.contract.lower() != expected_contract.lower():
        return CheckStep(
            "network",
            StepStatus.FAILED,
            f"the receipt names contract {where.contract}, but the ledger's AuditLedger for "
            f"epoch {where.epoch} is {expected_contract}",
        )
    contract = expected_contract or where.contract
    if await chain.code_hash(contract) == EMPTY_CODE_HASH:
        return CheckStep(
            "network",
            StepStatus.FAILED,
            f"chain {chain_id} has no contract at {contract}: the chain was reset or replaced "
            "since the batch was anchored, or this is not the ledger's chain",
        )
    pinned = "the expected" if expected_contract is not None else "unpinned"
    return CheckStep(
        "network", StepStatus.OK, f"chain {chain_id}, {pinned} contract {where.contract}"
    )


async def check_anchoring(chain: AuditChain, batch: BatchRef, where: ChainRef) -> list[CheckStep]:
    """`root_on_chain`, `transaction` and `block` for one batch; raises `ChainUnavailable`.

    `chain` must be bound to the contract the auditor trusts, not merely the one a receipt
    names.
    """
    return [
        await _root_on_chain(chain, batch),
        await _transaction(chain, batch, where),
        await _block(chain, where),
    ]


async def _root_on_chain(chain: AuditChain, batch: BatchRef) -> CheckStep:
    try:
        anchored = await chain.batch(batch.id)
    except ChainUnavailable:
        raise
    except ChainError as exc:
        return CheckStep("root_on_chain", StepStatus.FAILED, str(exc))
    if anchored is None:
        return CheckStep(
            "root_on_chain", StepStatus.FAILED, f"the contract holds no batch {batch.id}"
        )
    claimed = (batch.first_seq, batch.count, batch.root)
    if (anchored.first_seq, anchored.count, anchored.root) != claimed:
        return CheckStep(
            "root_on_chain",
            StepStatus.FAILED,
            f"batch {batch.id} on chain is seqs from {anchored.first_seq}, count "
            f"{anchored.count}, root {hex0x(anchored.root)}; the receipt says from "
            f"{batch.first_seq}, count {batch.count}, root {hex0x(batch.root)}",
        )
    return CheckStep(
        "root_on_chain",
        StepStatus.OK,
        f"batch({batch.id}) = ({batch.first_seq}, {batch.count}, {hex0x(batch.root)})",
    )


async def _transaction(chain: AuditChain, batch: BatchRef, where: ChainRef) -> CheckStep:
    try:
        mined = await chain.receipt(where.tx_hash)
    except ChainUnavailable:
        raise
    except (AnchorRejected, ChainError) as exc:
        return CheckStep("transaction", StepStatus.FAILED, str(exc))
    if mined is None:
        return CheckStep(
            "transaction",
            StepStatus.FAILED,
            f"the chain has no transaction {hex0x(where.tx_hash)} (never mined, or rolled back)",
        )
    problems = []
    if (mined.block_number, mined.block_hash) != (where.block_number, where.block_hash):
        problems.append(
            f"it is in block {mined.block_number} ({hex0x(mined.block_hash)}), not block "
            f"{where.block_number} ({hex0x(where.block_hash)})"
        )
    emitted = (mined.batch_id, mined.first_seq, mined.count, mined.root, mined.head)
    claimed = (batch.id, batch.first_seq, batch.count, batch.root, batch.head)
    if emitted != claimed:
        problems.append(
            f"it emitted BatchAnchored({mined.batch_id}, {mined.first_seq}, {mined.count}, "
            f"{hex0x(mined.root)}, {hex0x(mined.head)}), the receipt claims "
            f"({batch.id}, {batch.first_seq}, {batch.count}, {hex0x(batch.root)}, "
            f"{hex0x(batch.head)})"
        )
    if problems:
        return CheckStep(
            "transaction",
            StepStatus.FAILED,
            f"transaction {hex0x(where.tx_hash)}: " + "; ".join(problems),
        )
    return CheckStep(
        "transaction",
        StepStatus.OK,
        f"transaction {hex0x(where.tx_hash)} in block {where.block_number} emitted "
        f"BatchAnchored({batch.id}, {batch.first_seq}, {batch.count}, root, head "
        f"{hex0x(batch.head)})",
    )


async def _block(chain: AuditChain, where: ChainRef) -> CheckStep:
    canonical = await chain.block_hash(where.block_number)
    if canonical != where.block_hash:
        now = "does not exist" if canonical is None else f"is {hex0x(canonical)}"
        return CheckStep(
            "block",
            StepStatus.FAILED,
            f"block {where.block_number} {now} on the canonical chain, not "
            f"{hex0x(where.block_hash)}",
        )
    return CheckStep(
        "block",
        StepStatus.OK,
        f"block {where.block_number} ({hex0x(where.block_hash)}) is on the canonical chain",
    )
