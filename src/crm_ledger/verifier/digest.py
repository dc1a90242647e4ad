"""Ledger digests (`crm-ledger/digest/v1`) and the proof that the ledger only grew since one.

Exports: `DIGEST_FORMAT`, `Digest`, `SinceCheck`, `verify_since`.

A digest is the running head after one anchored batch, with the batch and where it was
anchored; an auditor saves it and later proves that the ledger extends it::

    {"format": "crm-ledger/digest/v1",
     "batch": {"id", "first_seq", "count", "root", "previous_head", "head"},
     "chain": {"chain_id", "contract", "epoch", "tx_hash", "block_number", "block_hash"}}

(`batch` and `chain` are exactly a receipt's objects.) `verify_since` asks the chain only: the
digest's batch must be anchored with the digest's head, and every `BatchAnchored` event after
it must chain from that head, seq after seq, to the contract's current `head()`. A digest whose
head the chain never produced (forged, or from another ledger) is refused. Imports no database
code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from crm_ledger.errors import FormatError
from crm_ledger.ledger import merkle
from crm_ledger.ledger.hexcodec import hex0x
from crm_ledger.ledger.receipts import BatchRef, ChainRef, json_object
from crm_ledger.verifier.chain import EMPTY_CODE_HASH, AuditChain

DIGEST_FORMAT = "crm-ledger/digest/v1"
_FIELDS = ("format", "batch", "chain")


@dataclass(frozen=True, slots=True)
class Digest:
    """The ledger head after batch `batch.id`, and where that batch was anchored."""

    batch: BatchRef
    chain: ChainRef

    @property
    def next_seq(self) -> int:
        """The first seq after the digest's batch."""
        return self.batch.first_seq + self.batch.count

    def to_json(self) -> dict[str, Any]:
        """The digest document."""
        return {
            "format": DIGEST_FORMAT,
            "batch": self.batch.to_json(),
            "chain": self.chain.to_json(),
        }

    @classmethod
    def from_json(cls, obj: object) -> Digest:
        """Parse and validate a digest; raises `FormatError` naming the first bad field."""
        obj = json_object("digest", obj, _FIELDS, document=DIGEST_FORMAT)
        if obj["format"] != DIGEST_FORMAT:
            raise FormatError(
                f"digest.format must be {DIGEST_FORMAT!r}, got {obj['format']!r}: this build "
                "reads only that digest format"
            )
        batch = BatchRef.from_json(obj["batch"], field="digest.batch")
        chain = ChainRef.from_json(obj["chain"], field="digest.chain")
        if batch.count == 0:
            raise FormatError("digest.batch.count must be at least 1: a batch is never empty")
        return cls(batch=batch, chain=chain)


@dataclass
class SinceCheck:
    """Whether the ledger extends a digest: failures (empty when it does) and what was seen."""

    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    batches_added: int = 0
    records_added: int = 0
    head: bytes | None = None
    last_batch_id: int | None = None

    @property
    def ok(self) -> bool:
        """True when the ledger provably extends the digest."""
        return not self.failures


async def verify_since(chain: AuditChain, digest: Digest, *, address: str) -> SinceCheck:
    """Prove from the chain alone that the ledger extends `digest`; raises `ChainUnavailable`.

    `chain` is bound to the contract at `address` (normally `digest.chain.contract`; after a
    chain reset and recovery, the new epoch's contract re-anchors the same batches with the same
    heads, so a digest of the old epoch can be checked against the new one).
    """
    check = SinceCheck()
    batch = digest.batch
    recomputed = merkle.next_head(batch.previous_head, batch.root, batch.first_seq, batch.count)
    if recomputed != batch.head:
        check.failures.append(
            f"the digest does not add up: SHA-256(previous_head ‖ root ‖ first_seq ‖ count) is "
            f"{hex0x(recomputed)}, the digest says head {hex0x(batch.head)}"
        )
    chain_id = await chain.chain_id()
    if chain_id != digest.chain.chain_id:
        check.failures.append(
            f"the node is chain {chain_id}; the digest is from chain {digest.chain.chain_id}"
        )
        return check
    if await chain.code_hash(address) == EMPTY_CODE_HASH:
        check.failures.append(
            f"chain {chain_id} has no contract at {address}: the chain was reset or replaced. "
            "If the ledger was recovered into a new epoch, check against its new contract "
            "(--contract): it re-anchors the same batches with the same heads"
        )
        return check
    event = await chain.find_batch_event(batch.id)
    if event is None:
        check.failures.append(
            f"the ledger has no batch {batch.id}: it does not extend the digest (the chain "
            "was rolled back or reset, or the digest is not from this ledger)"
        )
        return check
    anchored = (event.first_seq, event.count, event.root, event.head)
    if anchored != (batch.first_seq, batch.count, batch.root, batch.head):
        check.failures.append(
            f"batch {batch.id} on chain has head {hex0x(event.head)} (seqs from "
            f"{event.first_seq}, count {event.count}, root {hex0x(event.root)}); the digest "
            f"says head {hex0x(batch.head)}: the digest is forged or from another ledger"
        )
        return check
    if (event.block_number, event.block_hash) != (
        digest.chain.block_number,
        digest.chain.block_hash,
    ):
        check.notes.append(
            f"batch {batch.id} is now in block {event.block_number} ({hex0x(event.block_hash)}), "
            f"not block {digest.chain.block_number}: it was mined again after a reorg or a "
            "recovery, with the same head"
        )

    await _check_later_batches(chain, check, batch, since_block=event.block_number)
    return check


async def _check_later_batches(
    chain: AuditChain, check: SinceCheck, batch: BatchRef, *, since_block: int
) -> None:
    """Every batch anchored after the digest's continues its head chain, up to the contract's
    head; fills what the ledger added since."""
    head = batch.head
    end = batch.first_seq + batch.count
    last_id = batch.id
    later = sorted(
        (e for e in await chain.batch_events(since_block) if e.batch_id > batch.id),
        key=lambda e: e.batch_id,
    )
    for later_event in later:
        if later_event.batch_id != last_id + 1:
            check.failures.append(
                f"after batch {last_id} the next BatchAnchored event is batch "
                f"{later_event.batch_id}: events are missing"
            )
            break
        if later_event.first_seq != end:
            check.failures.append(
                f"batch {later_event.batch_id} starts at seq {later_event.first_seq}, not at "
                f"{end} where batch {last_id} ended"
            )
        head = merkle.next_head(head, later_event.root, later_event.first_seq, later_event.count)
        if later_event.head != head:
            check.failures.append(
                f"batch {later_event.batch_id}'s head {hex0x(later_event.head)} does not follow "
                f"from the digest: recomputed {hex0x(head)}"
            )
            head = later_event.head
        end = later_event.first_seq + later_event.count
        last_id = later_event.batch_id
    current_head = await chain.head()
    batch_count = await chain.batch_count()
    if current_head != head or batch_count != last_id + 1:
        check.failures.append(
            f"the contract's head is {hex0x(current_head)} after {batch_count} batches; the "
            f"events since the digest chain to {hex0x(head)} after {last_id + 1}"
        )
    check.batches_added = last_id - batch.id
    check.records_added = end - (batch.first_seq + batch.count)
    check.head = head
    check.last_batch_id = last_id
