"""Receipts for anchored records, built from the journal (format in `ledger.receipts`).

Exports: `build_receipt`, `anchored_batch`, `AUDIT_LEDGER`.

A receipt needs the whole tree of the record's batch. Trees are cached per (batch id, root) in a
small LRU, so the receipts of one batch cost one tree build; the root in the key means a batch
re-cut after a chain reset never reuses a stale tree.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from eth_utils.address import to_checksum_address
from sqlalchemy import select
from sqlalchemy.orm import Session

from crm_ledger.db.models import Batch, BatchStatus, Deployment, Record
from crm_ledger.errors import Conflict, FormatError
from crm_ledger.ledger import merkle
from crm_ledger.ledger.leaf import LeafInput, RecordKind
from crm_ledger.ledger.receipts import BatchRef, ChainRef, Receipt

AUDIT_LEDGER = "AuditLedger"
_CACHED_TREES = 16


class _TreeCache:
    """Thread-safe LRU of `merkle.levels` per (batch id, root)."""

    def __init__(self, maxsize: int) -> None:
        self._maxsize = maxsize
        self._trees: OrderedDict[tuple[int, bytes], list[list[bytes]]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[int, bytes]) -> list[list[bytes]] | None:
        with self._lock:
            tree = self._trees.get(key)
            if tree is not None:
                self._trees.move_to_end(key)
            return tree

    def put(self, key: tuple[int, bytes], tree: list[list[bytes]]) -> None:
        with self._lock:
            self._trees[key] = tree
            self._trees.move_to_end(key)
            while len(self._trees) > self._maxsize:
                self._trees.popitem(last=False)


_trees = _TreeCache(_CACHED_TREES)


def anchored_batch(session: Session, record: Record) -> Batch | None:
    """The record's batch when the chain holds it (status anchored), else None."""
    if record.batch_id is None or record.seq is None:
        return None
    batch = session.get(Batch, record.batch_id)
    if batch is None or batch.status != BatchStatus.ANCHORED.value:
        return None
    return batch


def build_receipt(session: Session, record: Record) -> dict[str, Any]:
    """The "crm-ledger/receipt/v1" JSON of an anchored record.

    Raises `Conflict` when the record is not anchored yet, and `FormatError` when the journal
    does not hold a consistent anchored batch for it (leaves that do not hash to the batch root,
    a missing AuditLedger deployment for the batch's epoch): a receipt that would not verify is
    never handed out.
    """
    batch = anchored_batch(session, record)
    if batch is None:
        raise Conflict(f"record {record.id} is not anchored yet", record_id=record.id)
    if record.seq is None or record.leaf_hash is None or record.previous_leaf_hash is None:
        raise FormatError(f"record {record.id} is in batch {batch.id} but has no leaf")
    if (
        batch.epoch is None
        or batch.tx_hash is None
        or batch.block_number is None
        or batch.block_hash is None
    ):
        raise FormatError(f"batch {batch.id} is marked anchored but has no chain location")
    deployment = session.scalars(
        select(Deployment).where(
            Deployment.contract == AUDIT_LEDGER, Deployment.epoch == batch.epoch
        )
    ).first()
    if deployment is None:
        raise FormatError(
            f"batch {batch.id} was anchored in epoch {batch.epoch}, but no {AUDIT_LEDGER} "
            "deployment is recorded for that epoch"
        )

    leaf_input = LeafInput(
        seq=record.seq,
        kind=RecordKind(record.kind),
        commitment=bytes(record.commitment),
        previous_leaf_hash=bytes(record.previous_leaf_hash),
    ).encode()
    leaf_hash = merkle.leaf_hash(leaf_input)
    if leaf_hash != bytes(record.leaf_hash):
        raise FormatError(f"record {record.id}: its stored leaf hash is not its leaf input's")
    index = record.seq - batch.first_seq
    receipt = Receipt(
        record_id=record.id,
        seq=record.seq,
        leaf_input=leaf_input,
        leaf_hash=leaf_hash,
        leaf_index=index,
        tree_size=batch.count,
        audit_path=tuple(merkle.inclusion_proof_from_levels(_tree(session, batch), index)),
        batch=BatchRef(
            id=batch.id,
            first_seq=batch.first_seq,
            count=batch.count,
            root=bytes(batch.root),
            previous_head=bytes(batch.previous_head),
            head=bytes(batch.head),
        ),
        chain=ChainRef(
            chain_id=deployment.chain_id,
            contract=str(to_checksum_address(deployment.address)),
            epoch=batch.epoch,
            tx_hash=bytes(batch.tx_hash),
            block_number=batch.block_number,
            block_hash=bytes(batch.block_hash),
        ),
    )
    return receipt.to_json()


def _tree(session: Session, batch: Batch) -> list[list[bytes]]:
    key = (batch.id, bytes(batch.root))
    tree = _trees.get(key)
    if tree is not None:
        return tree
    rows = session.execute(
        select(Record.seq, Record.leaf_hash).where(Record.batch_id == batch.id).order_by(Record.seq)
    ).all()
    seqs = [row.seq for row in rows]
    if seqs != list(range(batch.first_seq, batch.first_seq + batch.count)):
        raise FormatError(
            f"batch {batch.id} should hold seqs {batch.first_seq} to "
            f"{batch.first_seq + batch.count - 1}, the journal holds {len(seqs)} records for it"
        )
    leaves = [bytes(row.leaf_hash) for row in rows if row.leaf_hash is not None]
    if len(leaves) != batch.count:
        raise FormatError(f"batch {batch.id} has records without a leaf hash")
    tree = merkle.levels(leaves)
    if tree[-1][0] != bytes(batch.root):
        raise FormatError(f"the leaves of batch {batch.id} do not hash to its root")
    _trees.put(key, tree)
    return tree
