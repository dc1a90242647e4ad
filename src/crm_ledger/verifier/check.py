"""The independent verifier: a bundle's bytes and the chain's JSON-RPC, nothing else.

Exports: `BundleCheck`, `ChainFor`, `check_bundle_offline`, `check_bundle_on_chain`,
`verify_bundle`.

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
import bisect
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from json.scanner import make_scanner
from pathlib import Path
from typing import Any

from crm_ledger.errors import FormatError, InvalidProof
from crm_ledger.ledger import merkle
from crm_ledger.ledger.leaf import FORMAT_VERSION, LEAF_INPUT_SIZE, MAX_SEQ, RecordKind
from crm_ledger.ledger.receipts import hex0x
from crm_ledger.verifier.bundle import (
    MAX_LINE_BYTES,
    RECORD_FIELDS,
    BundleBatch,
    BundleHeader,
    parse_batch,
    parse_header,
    parse_key,
    parse_record,
)
from crm_ledger.verifier.chain import AuditChain, ChainFor
from crm_ledger.verifier.onchain import CheckStep, StepStatus, check_anchoring, check_network

MAX_LISTED_FAILURES = 1_000
#: Batches checked on chain at the same time.
CHAIN_CONCURRENCY = 8
#: The progress callback is called every 16,384 records.
PROGRESS_MASK = 16_384 - 1

_KIND_NAMES = {int(kind): kind.name.lower() for kind in RecordKind}
_KIND_TAILS = {
    int(kind): b'","kind":"' + kind.name.lower().encode() + b'","recorded_at":"'
    for kind in RecordKind
}
_DOCUMENT_END = b'","v":1}'


@dataclass
class BundleCheck:
    """What verifying a bundle found; `ok` when nothing failed."""

    header: BundleHeader | None = None
    failures: list[str] = field(default_factory=list)
    failure_count: int = 0
    notes: list[str] = field(default_factory=list)
    records: int = 0
    commitments_checked: int = 0
    content_unchecked: int = 0
    erased: int = 0
    batches: int = 0
    batches_on_chain: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when every check held."""
        return self.failure_count == 0

    def fail(self, message: str) -> None:
        """Count a failure, listing it while under `MAX_LISTED_FAILURES`."""
        self.failure_count += 1
        if len(self.failures) < MAX_LISTED_FAILURES:
            self.failures.append(message)


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


_decode_json = json.JSONDecoder().decode


def _json_line(number: int, line: bytes) -> object:
    if len(line) > MAX_LINE_BYTES:
        raise FormatError(f"bundle line {number} is over {MAX_LINE_BYTES} bytes")
    try:
        return _decode_json(line.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        if not line.strip():
            raise FormatError(f"bundle line {number} is empty") from None
        raise FormatError(
            f"bundle line {number} is not JSON (is the file truncated or corrupted?)"
        ) from None


def check_bundle_offline(
    lines: Iterable[bytes], *, progress: Callable[[int], None] | None = None
) -> tuple[BundleCheck, list[BundleBatch]]:
    """Every check that needs only the bundle; returns the findings and the batches.

    The record loop is the hot path (a million records is the benchmark): locals, no calls
    per record but JSON decoding and hashing.
    """
    check = BundleCheck()
    numbered = enumerate(lines, 1)
    first = next(numbered, None)
    if first is None:
        raise FormatError("the bundle is empty")
    header = parse_header(_json_line(*first))
    check.header = header
    scope = header.scope
    batches: list[BundleBatch] = []
    keys: dict[str, bytes] = {}
    phase = 0  # 0 batches, 1 keys, 2 records
    starts: list[int] = []

    sha256 = hashlib.sha256
    hmac_digest = hmac.digest
    zero = merkle.ZERO_HASH
    kind_tails = _KIND_TAILS
    document_end = _DOCUMENT_END
    end_quote = -len(_DOCUMENT_END)
    fail = check.fail
    # The scanner under json.loads, without its per-call wrapping: one JSON value from the
    # start of the line (the rest must be the newline).
    # (typeshed types make_scanner's argument as make_scanner; it takes a JSONDecoder.)
    scan: Callable[[str, int], tuple[Any, int]] = make_scanner(
        json.JSONDecoder()  # type: ignore[arg-type]
    )
    record_fields = RECORD_FIELDS
    leaf_input_hex = 2 + 2 * LEAF_INPUT_SIZE
    tips: dict[str, bytes] = {}
    unattributed_leaves: set[bytes] = set()
    used_previous: set[bytes] = set()
    chain_from_start = scope.kind in ("all", "customer")
    only_customer = scope.customer_id if scope.kind == "customer" else None
    all_scope = scope.kind == "all"
    last_seq = -1
    records = commitments = unchecked = erased = 0
    batch_end = -1
    current: BundleBatch | None = None
    leaves: list[bytes | None] | None = None
    visited: set[int] = set()

    for number, line in numbered:
        try:
            decoded = line.decode("utf-8")
            obj, end = scan(decoded, 0)
            if end != len(decoded) and decoded[end:].strip():
                raise ValueError("more than one JSON value on the line")
        except (ValueError, UnicodeDecodeError, StopIteration):
            obj = _json_line(number, line)
        if type(obj) is not dict:
            raise FormatError(f"bundle line {number} must be a JSON object")
        kind = obj.get("type")
        if kind == "record":
            if phase < 2:
                phase = 2
                batches.sort(key=lambda b: b.batch.first_seq)
                starts = [b.batch.first_seq for b in batches]
            # Fast path for the well-formed record of a complete batch; anything else goes
            # through `parse_record`, which says exactly what is wrong.
            seq: Any = obj.get("seq")
            record_id: Any = obj.get("record_id")
            customer_id: Any = obj.get("customer_id")
            text: Any = obj.get("content")
            hex_input: Any = obj.get("leaf_input")
            audit_path: tuple[bytes, ...] | None = None
            leaf_input = b""
            if (
                obj.keys() == record_fields
                and type(seq) is int
                and 0 <= seq <= MAX_SEQ
                and (type(record_id) is str or record_id is None)
                and (type(customer_id) is str or customer_id is None)
                and (type(text) is str or text is None)
                and obj["audit_path"] is None
                and type(hex_input) is str
                and len(hex_input) == leaf_input_hex
                and hex_input.startswith("0x")
            ):
                try:
                    leaf_input = bytes.fromhex(hex_input[2:])
                except ValueError:
                    leaf_input = b""
            if len(leaf_input) != LEAF_INPUT_SIZE:
                record = parse_record(obj, f"line {number}")
                seq, record_id, customer_id = record.seq, record.record_id, record.customer_id
                text, leaf_input, audit_path = record.content, record.leaf_input, record.audit_path
            records += 1
            if progress is not None and not records & PROGRESS_MASK:
                progress(records)
            if seq <= last_seq:
                raise FormatError(
                    f"bundle line {number}: record seq {seq} comes after seq {last_seq}; records "
                    "are in increasing seq order"
                )
            last_seq = seq
            if seq >= batch_end or current is None:
                if current is not None and leaves is not None:
                    _finish_complete(check, current, leaves)
                index = bisect.bisect_right(starts, seq) - 1
                current = batches[index] if index >= 0 else None
                if current is None or seq >= current.batch.first_seq + current.batch.count:
                    fail(f"record seq {seq}: no batch of the bundle holds it")
                    current = leaves = None
                    batch_end = -1
                    continue
                batch_end = current.batch.first_seq + current.batch.count
                leaves = [None] * current.batch.count if current.complete else None
                visited.add(current.batch.id)
            batch = current.batch
            if leaf_input[0] != FORMAT_VERSION:
                fail(f"record seq {seq}: unknown leaf format version {leaf_input[0]}")
            if int.from_bytes(leaf_input[1:9], "big") != seq:
                fail(
                    f"record seq {seq}: its leaf input is for seq "
                    f"{int.from_bytes(leaf_input[1:9], 'big')}"
                )
            kind_tail = kind_tails.get(leaf_input[9])
            if kind_tail is None:
                fail(f"record seq {seq}: unknown record kind {leaf_input[9]} in its leaf input")
            leaf = sha256(b"\x00" + leaf_input).digest()

            # Inclusion.
            if leaves is not None:
                leaves[seq - batch.first_seq] = leaf
            elif audit_path is None:
                fail(
                    f"record seq {seq}: batch {batch.id} is not complete in the bundle, so the "
                    "record needs an audit path"
                )
            else:
                try:
                    rebuilt = merkle.root_from_inclusion_proof(
                        index=seq - batch.first_seq,
                        tree_size=batch.count,
                        leaf=leaf,
                        proof=audit_path,
                    )
                except InvalidProof as exc:
                    fail(f"record seq {seq}: inclusion: {exc}")
                else:
                    if rebuilt != batch.root:
                        fail(
                            f"record seq {seq}: inclusion: the audit path leads to "
                            f"{hex0x(rebuilt)}, not to batch {batch.id}'s root {hex0x(batch.root)}"
                        )

            # Content and commitment.
            if only_customer is not None and customer_id != only_customer:
                fail(f"record seq {seq}: it is not a record of customer {only_customer}")
            if text is not None:
                content = text.encode("utf-8", errors="surrogatepass")
                # A canonical document ends with its top-level members after "body", sorted,
                # and the last quote before `","v":1}` closes "recorded_at": so the last
                # occurrence of this tail is the top level's, not a look-alike inside "body".
                tail = (
                    b'"customer_id":"'
                    + (customer_id or "").encode()
                    + b'","id":"'
                    + (record_id or "").encode()
                    + (kind_tail or b"?")
                )
                at = content.rfind(tail)
                if (
                    record_id is None
                    or customer_id is None
                    or at < 0
                    or not content.endswith(document_end)
                    or content.find(b'"', at + len(tail)) != len(content) + end_quote
                ):
                    fail(
                        f"record seq {seq}: its content is not the version 1 document of "
                        f"record {record_id}, customer {customer_id}, kind "
                        f"{_KIND_NAMES.get(leaf_input[9], leaf_input[9])}"
                    )
                key = keys.get(customer_id) if customer_id is not None else None
                if key is None:
                    unchecked += 1
                else:
                    commitments += 1
                    if hmac_digest(key, content, "sha256") != leaf_input[10:42]:
                        fail(
                            f"record seq {seq}: commitment: HMAC-SHA256(customer key, content) "
                            f"is not the commitment {hex0x(leaf_input[10:42])} in its leaf input"
                        )
            elif record_id is None and customer_id is None:
                erased += 1
            else:
                unchecked += 1

            # The customer's chain of leaves.
            previous = leaf_input[42:74]
            if customer_id is not None:
                tip = tips.get(customer_id)
                if tip is None:
                    if chain_from_start and previous != zero:
                        fail(
                            f"record seq {seq}: it is customer {customer_id}'s first record in "
                            f"the bundle but links to {hex0x(previous)}: an earlier record of "
                            "theirs is missing"
                        )
                elif previous != tip:
                    fail(
                        f"record seq {seq}: it links to {hex0x(previous)}, not to the leaf of "
                        f"customer {customer_id}'s previous record {hex0x(tip)}"
                    )
                tips[customer_id] = leaf
            else:
                # An erased customer's records still form a chain, tied to no one.
                if all_scope and previous != zero:
                    if previous not in unattributed_leaves or previous in used_previous:
                        fail(
                            f"record seq {seq}: it links to {hex0x(previous)}, which is not the "
                            "leaf of an earlier record of its (erased) customer"
                        )
                    used_previous.add(previous)
                unattributed_leaves.add(leaf)
            continue

        where = f"line {number}"
        if kind == "batch":
            if phase > 0:
                raise FormatError(f"bundle {where}: batch lines come before key and record lines")
            batches.append(parse_batch(obj, where))
        elif kind == "key":
            if phase > 1:
                raise FormatError(f"bundle {where}: key lines come before record lines")
            phase = 1
            parsed = parse_key(obj, where)
            keys[parsed.customer_id] = parsed.key
        else:
            raise FormatError(
                f"bundle {where}.type must be 'batch', 'key' or 'record', got {kind!r}"
            )

    if current is not None and leaves is not None:
        _finish_complete(check, current, leaves)
    for entry in batches:
        if entry.complete and entry.batch.id not in visited:
            check.fail(
                f"batch {entry.batch.id} is marked complete but the bundle holds none of its "
                "records"
            )
    check.records = records
    check.commitments_checked = commitments
    check.content_unchecked = unchecked
    check.erased = erased
    check.batches = len(batches)
    if progress is not None:
        progress(records)
    _check_batches(check, header, batches)
    _check_counts(check, header, batches, keys, records, last_seq)
    return check, batches


def _finish_complete(check: BundleCheck, entry: BundleBatch, leaves: list[bytes | None]) -> None:
    """Every record of a complete batch was read: all present, and they give its root."""
    batch = entry.batch
    absent = [batch.first_seq + i for i, leaf in enumerate(leaves) if leaf is None]
    if absent:
        shown = ", ".join(str(seq) for seq in absent[:10])
        more = f" and {len(absent) - 10} more" if len(absent) > 10 else ""
        check.fail(
            f"batch {batch.id} is marked complete but the bundle lacks its records "
            f"seq {shown}{more}"
        )
        return
    rebuilt = merkle.root([leaf for leaf in leaves if leaf is not None])
    if rebuilt != batch.root:
        check.fail(
            f"batch {batch.id}: its {batch.count} leaves hash to {hex0x(rebuilt)}, not "
            f"to its root {hex0x(batch.root)}"
        )


def _check_batches(check: BundleCheck, header: BundleHeader, batches: list[BundleBatch]) -> None:
    by_id = sorted(batches, key=lambda b: b.batch.id)
    previous = None
    for entry in by_id:
        batch = entry.batch
        head = merkle.next_head(batch.previous_head, batch.root, batch.first_seq, batch.count)
        if head != batch.head:
            check.fail(
                f"batch {batch.id}: SHA-256(previous_head ‖ root ‖ first_seq ‖ count) is "
                f"{hex0x(head)}, the bundle says head {hex0x(batch.head)}"
            )
        if previous is not None and previous.id + 1 == batch.id:
            if batch.previous_head != previous.head:
                check.fail(
                    f"batch {batch.id}: its previous head {hex0x(batch.previous_head)} is not "
                    f"batch {previous.id}'s head {hex0x(previous.head)}"
                )
            if batch.first_seq != previous.first_seq + previous.count:
                check.fail(
                    f"batch {batch.id} starts at seq {batch.first_seq}, not where batch "
                    f"{previous.id} ended ({previous.first_seq + previous.count})"
                )
        elif previous is not None and header.scope.kind == "all":
            check.fail(f"batches {previous.id + 1} to {batch.id - 1} are missing from the bundle")
        previous = batch
    if header.scope.kind == "all" and by_id:
        first = by_id[0].batch
        if first.id != 0 or first.first_seq != 0 or first.previous_head != merkle.ZERO_HASH:
            check.fail(
                "the bundle claims the whole ledger but does not start at batch 0, seq 0 and "
                "the zero head"
            )
        if not all(entry.complete for entry in by_id):
            check.fail("the bundle claims the whole ledger but some batches are incomplete")


def _check_counts(
    check: BundleCheck,
    header: BundleHeader,
    batches: list[BundleBatch],
    keys: dict[str, bytes],
    records: int,
    last_seq: int,
) -> None:
    announced = (header.batches, header.keys, header.records)
    if announced != (len(batches), len(keys), records):
        check.fail(
            f"the header announces {header.batches} batches, {header.keys} keys and "
            f"{header.records} records; the bundle holds {len(batches)}, {len(keys)} and "
            f"{records} (truncated or spliced?)"
        )
    scope = header.scope
    if scope.kind == "range" and scope.from_seq is not None and scope.to_seq is not None:
        expected = scope.to_seq - scope.from_seq + 1
        if records != expected:
            check.fail(
                f"the bundle covers seqs {scope.from_seq} to {scope.to_seq} but holds {records} "
                f"records, not {expected}"
            )
        elif last_seq != scope.to_seq:
            check.fail(f"the bundle's last record is seq {last_seq}, not {scope.to_seq}")


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
