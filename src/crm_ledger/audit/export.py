"""Bundles from the journal, and the current digest: what auditors take away.

Exports: `BundleExport`, `open_export`, `ledger_digest`.

Only anchored batches are exported (the chain must be able to confirm every batch of a
bundle), and only the longest run of them from batch 0, so an "all" bundle is the whole ledger
up to its latest anchored head. Everything is read in one snapshot, so a bundle is consistent
even while records are written or customers erased.

An erased customer's records are exported as leaves only: no content, no record id, no
customer id; their erasure record too, since its document names the customer. A customer
bundle for an erased customer is refused.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime

from eth_utils.address import to_checksum_address
from sqlalchemy import Connection, Engine, func, select

from crm_ledger.audit.snapshot import STORED_BATCHES, read_snapshot
from crm_ledger.db.models import BatchStatus, Customer, Deployment, Record
from crm_ledger.errors import Conflict, NotFound, Unprocessable
from crm_ledger.journal.receipts import AUDIT_LEDGER
from crm_ledger.journal.schemas import is_public_id
from crm_ledger.ledger import merkle
from crm_ledger.ledger.leaf import FORMAT_VERSION
from crm_ledger.ledger.receipts import BatchRef, ChainRef
from crm_ledger.verifier.bundle import (
    BundleBatch,
    BundleHeader,
    BundleKey,
    BundleRecord,
    Scope,
    batch_line,
    header_line,
    key_line,
    record_line,
)
from crm_ledger.verifier.digest import Digest

_FETCH_ROWS = 10_000


@dataclass
class BundleExport:
    """A bundle ready to be written: its header is known, its lines are streamed by `lines()`.

    Holds a database snapshot open until `lines()` is exhausted or `close()` is called.
    """

    header: BundleHeader
    _conn: Connection
    _stack: ExitStack
    _batches: list[BundleBatch]
    _first: int
    _last: int
    _customer_pk: int | None
    _include_keys: bool

    def close(self) -> None:
        """Release the snapshot (also done when `lines()` ends)."""
        self._stack.close()

    def lines(self) -> Iterator[bytes]:
        """Every line of the bundle, header first."""
        try:
            yield header_line(self.header)
            for batch in self._batches:
                yield batch_line(batch)
            if self._include_keys:
                for key in self._keys():
                    yield key_line(key)
            yield from self._records()
        finally:
            self.close()

    def _keys(self) -> Iterator[BundleKey]:
        query = (
            select(Customer.id, Customer.key)
            .where(Customer.key.is_not(None), Customer.erased_at.is_(None))
            .order_by(Customer.id)
        )
        if self._customer_pk is not None:
            query = query.where(Customer.pk == self._customer_pk)
        else:
            # EXISTS per customer walks ix_records_customer_created: a few rows per customer,
            # however the planner guesses the size of the range.
            has_records = (
                select(Record.pk)
                .where(
                    Record.customer_pk == Customer.pk,
                    Record.seq >= self._first,
                    Record.seq <= self._last,
                )
                .exists()
            )
            query = query.where(has_records)
        for customer_id, key in self._conn.execute(query):
            yield BundleKey(customer_id=customer_id, key=bytes(key))

    def _records(self) -> Iterator[bytes]:
        query = (
            select(
                Record.seq,
                Record.id,
                Record.kind,
                Record.content,
                Record.commitment,
                Record.previous_leaf_hash,
                Customer.id.label("customer_id"),
                Customer.erased_at,
            )
            .join(Customer, Customer.pk == Record.customer_pk)
            .where(Record.seq >= self._first, Record.seq <= self._last)
            .order_by(Record.seq)
        )
        if self._customer_pk is not None:
            query = query.where(Record.customer_pk == self._customer_pk)
        starts = [b.batch.first_seq for b in self._batches]
        trees: dict[int, list[list[bytes]] | None] = {}
        rows = self._conn.execution_options(yield_per=_FETCH_ROWS).execute(query)
        for seq, rid, kind, content, commitment, previous, customer_id, erased_at in rows:
            batch = self._batches[_index(starts, seq)]
            audit_path: tuple[bytes, ...] | None = None
            if not batch.complete:
                if batch.batch.id not in trees:
                    trees = {batch.batch.id: self._tree(batch.batch)}
                tree = trees[batch.batch.id]
                index = seq - batch.batch.first_seq
                audit_path = tuple(merkle.inclusion_proof_from_levels(tree, index)) if tree else ()
            erased = erased_at is not None
            yield record_line(
                BundleRecord(
                    seq=seq,
                    record_id=None if erased else rid,
                    customer_id=None if erased else customer_id,
                    content=None
                    if erased or content is None
                    else bytes(content).decode("utf-8", errors="replace"),
                    leaf_input=_leaf_input(seq, kind, bytes(commitment), previous),
                    audit_path=audit_path,
                )
            )

    def _tree(self, batch: BatchRef) -> list[list[bytes]] | None:
        """The batch's tree from its stored leaves; None when records are missing."""
        leaves: list[bytes | None] = [None] * batch.count
        for seq, leaf in self._conn.execute(
            select(Record.seq, Record.leaf_hash).where(
                Record.seq >= batch.first_seq, Record.seq < batch.first_seq + batch.count
            )
        ):
            leaves[seq - batch.first_seq] = None if leaf is None else bytes(leaf)
        if any(leaf is None for leaf in leaves):
            return None
        return merkle.levels([leaf for leaf in leaves if leaf is not None])


def open_export(engine: Engine, *, scope: Scope, include_keys: bool) -> BundleExport:
    """Plan a bundle of `scope`; raises `NotFound`, `Conflict` (erased customer) or
    `Unprocessable` (a range with nothing anchored) before anything is written."""
    stack = ExitStack()
    conn = stack.enter_context(read_snapshot(engine))
    try:
        return _plan(conn, stack, scope, include_keys)
    except BaseException:
        stack.close()
        raise


def _plan(conn: Connection, stack: ExitStack, scope: Scope, include_keys: bool) -> BundleExport:
    anchored = _anchored_prefix(conn)
    end = anchored[-1].batch.first_seq + anchored[-1].batch.count if anchored else 0
    customer_pk = None
    first, last = 0, end - 1
    if scope.kind == "customer":
        scope, customer_pk, batches, records = _customer_plan(conn, scope, anchored, end)
    else:
        scope, first, last, batches, records = _range_plan(conn, scope, anchored, end)
    export = BundleExport(
        header=BundleHeader(
            created_at=_now(),
            scope=scope,
            includes_keys=include_keys,
            batches=len(batches),
            keys=0,
            records=records,
        ),
        _conn=conn,
        _stack=stack,
        _batches=batches,
        _first=first,
        _last=last,
        _customer_pk=customer_pk,
        _include_keys=include_keys,
    )
    if include_keys:
        keys = sum(1 for _ in export._keys())
        export.header = BundleHeader(
            created_at=export.header.created_at,
            scope=scope,
            includes_keys=True,
            batches=len(batches),
            keys=keys,
            records=records,
        )
    return export


def _customer_plan(
    conn: Connection, scope: Scope, anchored: list[BundleBatch], end: int
) -> tuple[Scope, int, list[BundleBatch], int]:
    """A customer's export: their scope, pk, the anchored batches holding their records, and
    how many records they have; `NotFound`, or `Conflict` once they were erased."""
    assert scope.customer_id is not None
    customer = None
    if is_public_id(scope.customer_id):
        customer = conn.execute(
            select(Customer.pk, Customer.erased_at).where(Customer.id == scope.customer_id.lower())
        ).first()
    if customer is None:
        raise NotFound(f"no customer with id {scope.customer_id!r}", customer_id=scope.customer_id)
    if customer.erased_at is not None:
        raise Conflict(
            f"customer {scope.customer_id}'s personal data was erased: there is nothing to "
            "export for them. Their records' leaves are still in bundles of the whole "
            "ledger, tied to no customer.",
            customer_id=scope.customer_id,
        )
    customer_pk = customer.pk
    scope = Scope("customer", customer_id=scope.customer_id.lower())
    seqs = [
        seq
        for seq in conn.execute(
            select(Record.seq)
            .where(Record.customer_pk == customer_pk, Record.seq < end)
            .order_by(Record.seq)
        ).scalars()
        if seq is not None
    ]
    starts = [b.batch.first_seq for b in anchored]
    wanted = {_index(starts, seq) for seq in seqs}
    batches = [
        BundleBatch(b.batch, b.chain, complete=False) for i, b in enumerate(anchored) if i in wanted
    ]
    records = len(seqs)
    return scope, customer_pk, batches, records


def _range_plan(
    conn: Connection, scope: Scope, anchored: list[BundleBatch], end: int
) -> tuple[Scope, int, int, list[BundleBatch], int]:
    """The whole ledger's or a seq range's export: its scope, first and last seq, the batches
    that overlap it, and how many records it has."""
    first, last = 0, end - 1
    if scope.kind == "range":
        assert scope.from_seq is not None and scope.to_seq is not None
        if scope.from_seq >= end:
            raise Unprocessable(
                f"from_seq {scope.from_seq} is not anchored yet: the anchored ledger ends "
                f"at seq {end - 1}"
                if end
                else "nothing is anchored yet",
                errors=[{"location": "query", "field": "from_seq", "message": "not anchored"}],
            )
        first, last = scope.from_seq, min(scope.to_seq, end - 1)
        scope = Scope("range", from_seq=first, to_seq=last)
    batches = [
        BundleBatch(
            b.batch,
            b.chain,
            complete=first <= b.batch.first_seq and b.batch.first_seq + b.batch.count - 1 <= last,
        )
        for b in anchored
        if b.batch.first_seq <= last and first < b.batch.first_seq + b.batch.count
    ]
    records = int(
        conn.execute(
            select(func.count()).where(Record.seq >= first, Record.seq <= last)
        ).scalar_one()
    )
    return scope, first, last, batches, records


def ledger_digest(engine: Engine) -> Digest | None:
    """The digest of the latest anchored batch (of the run from batch 0), or None."""
    with read_snapshot(engine) as conn:
        anchored = _anchored_prefix(conn)
    if not anchored:
        return None
    return Digest(batch=anchored[-1].batch, chain=anchored[-1].chain)


def _anchored_prefix(conn: Connection) -> list[BundleBatch]:
    """Anchored batches from batch 0 on, up to the first gap, each with its chain location."""
    deployments = {
        epoch: (int(chain_id), str(to_checksum_address(address)))
        for epoch, chain_id, address in conn.execute(
            select(Deployment.epoch, Deployment.chain_id, Deployment.address).where(
                Deployment.contract == AUDIT_LEDGER
            )
        )
    }
    out: list[BundleBatch] = []
    end = 0
    for row in conn.execute(STORED_BATCHES):
        location = deployments.get(row.epoch)
        if (
            row.status != BatchStatus.ANCHORED.value
            or row.id != len(out)
            or row.first_seq != end
            or location is None
            or row.tx_hash is None
            or row.block_hash is None
            or row.block_number is None
        ):
            break
        out.append(
            BundleBatch(
                batch=BatchRef(
                    id=row.id,
                    first_seq=row.first_seq,
                    count=row.size,
                    root=bytes(row.root),
                    previous_head=bytes(row.previous_head),
                    head=bytes(row.head),
                ),
                chain=ChainRef(
                    chain_id=location[0],
                    contract=location[1],
                    epoch=row.epoch,
                    tx_hash=bytes(row.tx_hash),
                    block_number=row.block_number,
                    block_hash=bytes(row.block_hash),
                ),
                complete=True,
            )
        )
        end = row.first_seq + row.size
    return out


def _leaf_input(seq: int, kind: int, commitment: bytes, previous: object) -> bytes:
    """The 74-byte leaf input from the stored fields.

    A tampered row may not make a valid leaf input (a kind out of range, a field of the wrong
    length); it is exported anyway, forced into the layout, so the verifier reports that record
    as failing rather than refusing the whole bundle.
    """
    kind_byte = bytes([kind]) if 0 <= kind <= 255 else b"\xff"
    previous_bytes = bytes(previous) if isinstance(previous, bytes | memoryview) else b""
    return (
        bytes([FORMAT_VERSION])
        + seq.to_bytes(8, "big")
        + kind_byte
        + commitment[:32].ljust(32, b"\0")
        + previous_bytes[:32].ljust(32, b"\0")
    )


def _index(starts: list[int], seq: int) -> int:
    return bisect.bisect_right(starts, seq) - 1


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
