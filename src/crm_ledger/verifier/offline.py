"""The verifier's offline pass: every check that needs only the bundle's bytes.

Exports: `BundleCheck`, `check_bundle_offline`, `MAX_LISTED_FAILURES`, `PROGRESS_MASK`.

A bundle is a header line, then batch lines, then key lines, then record lines (see
`verifier.bundle`). For every record: the leaf input decodes (version 1, its own seq, a known
kind); its leaf hash is included in its batch (by the RFC 9162 audit path, or, when the bundle
holds the whole batch, by rebuilding the batch's tree); the content is the committed document
of that record and kind, and HMAC-SHA256(key, content) is the commitment when the key is in the
bundle; each customer's records link to one another by previous leaf hash. For every batch: its
head is SHA-256(previous head ‖ root ‖ first_seq ‖ count) and consecutive batches chain. The
checks on chain are `verifier.check`'s.
"""

from __future__ import annotations

import bisect
import enum
import hashlib
import hmac
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from json.scanner import make_scanner
from typing import Any

from crm_ledger.errors import FormatError, InvalidProof
from crm_ledger.ledger import merkle
from crm_ledger.ledger.hexcodec import hex0x
from crm_ledger.ledger.leaf import FORMAT_VERSION, LEAF_INPUT_SIZE, MAX_SEQ, RecordKind
from crm_ledger.ledger.receipts import BatchRef
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

__all__ = ["MAX_LISTED_FAILURES", "PROGRESS_MASK", "BundleCheck", "check_bundle_offline"]

MAX_LISTED_FAILURES = 1_000
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


class _Section(enum.IntEnum):
    """Which lines the bundle is at: batches, then keys, then records, in that order."""

    BATCHES = 0
    KEYS = 1
    RECORDS = 2


_decode_json = json.JSONDecoder().decode
# The scanner under json.loads, without its per-call wrapping: one JSON value from the start of
# the line (the rest must be the newline). (typeshed types make_scanner's argument as
# make_scanner; it takes a JSONDecoder.)
_scan: Callable[[str, int], tuple[Any, int]] = make_scanner(
    json.JSONDecoder()  # type: ignore[arg-type]
)
_LEAF_INPUT_HEX = 2 + 2 * LEAF_INPUT_SIZE


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


def _object_line(number: int, line: bytes) -> dict[str, Any]:
    """Line `number` as a JSON object (the scanner first; `_json_line` says what is wrong)."""
    try:
        decoded = line.decode("utf-8")
        obj, end = _scan(decoded, 0)
        if end != len(decoded) and decoded[end:].strip():
            raise ValueError("more than one JSON value on the line")
    except (ValueError, UnicodeDecodeError, StopIteration):
        obj = _json_line(number, line)
    if type(obj) is not dict:
        raise FormatError(f"bundle line {number} must be a JSON object")
    return obj


def check_bundle_offline(
    lines: Iterable[bytes], *, progress: Callable[[int], None] | None = None
) -> tuple[BundleCheck, list[BundleBatch]]:
    """Every check that needs only the bundle; returns the findings and the batches.

    The record loop is the hot path (a million records is the benchmark): per record, JSON
    decoding, hashing and three method calls; failures and batch changes call out.
    """
    numbered = enumerate(lines, 1)
    first = next(numbered, None)
    if first is None:
        raise FormatError("the bundle is empty")
    offline = _OfflineCheck(parse_header(_json_line(*first)), progress)
    record = offline.record
    for number, line in numbered:
        obj = _object_line(number, line)
        if obj.get("type") == "record":
            record(number, obj)
        else:
            offline.other_line(number, obj)
    return offline.finish()


class _OfflineCheck:
    """One offline pass over a bundle: `record` per record line, `other_line` for the rest."""

    def __init__(self, header: BundleHeader, progress: Callable[[int], None] | None) -> None:
        self.check = BundleCheck(header=header)
        self.header = header
        self.progress = progress
        self.section = _Section.BATCHES
        self.batches: list[BundleBatch] = []
        self.starts: list[int] = []
        self.keys: dict[str, bytes] = {}
        self.tips: dict[str, bytes] = {}
        self.unattributed_leaves: set[bytes] = set()
        self.used_previous: set[bytes] = set()
        scope = header.scope
        self.chain_from_start = scope.kind in ("all", "customer")
        self.only_customer = scope.customer_id if scope.kind == "customer" else None
        self.all_scope = scope.kind == "all"
        self.last_seq = -1
        self.records = self.commitments = self.unchecked = self.erased = 0
        self.batch_end = -1
        self.current: BundleBatch | None = None
        self.leaves: list[bytes | None] | None = None
        self.visited: set[int] = set()

    def other_line(self, number: int, obj: dict[str, Any]) -> None:
        """A batch or key line, each in its section; anything else is refused."""
        where, kind = f"line {number}", obj.get("type")
        if kind == "batch":
            if self.section > _Section.BATCHES:
                raise FormatError(f"bundle {where}: batch lines come before key and record lines")
            self.batches.append(parse_batch(obj, where))
        elif kind == "key":
            if self.section > _Section.KEYS:
                raise FormatError(f"bundle {where}: key lines come before record lines")
            self.section = _Section.KEYS
            parsed = parse_key(obj, where)
            self.keys[parsed.customer_id] = parsed.key
        else:
            raise FormatError(
                f"bundle {where}.type must be 'batch', 'key' or 'record', got {kind!r}"
            )

    def record(self, number: int, obj: dict[str, Any]) -> None:
        """Check one record line: its place, leaf input, inclusion, content and link."""
        if self.section is not _Section.RECORDS:
            self._start_records()
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
            obj.keys() == RECORD_FIELDS
            and type(seq) is int
            and 0 <= seq <= MAX_SEQ
            and (type(record_id) is str or record_id is None)
            and (type(customer_id) is str or customer_id is None)
            and (type(text) is str or text is None)
            and obj["audit_path"] is None
            and type(hex_input) is str
            and len(hex_input) == _LEAF_INPUT_HEX
            and hex_input.startswith("0x")
        ):
            try:
                leaf_input = bytes.fromhex(hex_input[2:])
            except ValueError:
                leaf_input = b""
        if len(leaf_input) != LEAF_INPUT_SIZE:
            parsed = parse_record(obj, f"line {number}")
            seq, record_id, customer_id = parsed.seq, parsed.record_id, parsed.customer_id
            text, leaf_input, audit_path = parsed.content, parsed.leaf_input, parsed.audit_path
        self.records += 1
        if self.progress is not None and not self.records & PROGRESS_MASK:
            self.progress(self.records)
        if seq <= self.last_seq:
            raise FormatError(
                f"bundle line {number}: record seq {seq} comes after seq {self.last_seq}; "
                "records are in increasing seq order"
            )
        self.last_seq = seq
        if (seq >= self.batch_end or self.current is None) and not self._enter_batch(seq):
            return
        current = self.current
        assert current is not None
        kind_tail = _KIND_TAILS.get(leaf_input[9])
        if (
            leaf_input[0] != FORMAT_VERSION
            or int.from_bytes(leaf_input[1:9], "big") != seq
            or kind_tail is None
        ):
            self._bad_leaf_input(seq, leaf_input)
        leaf = hashlib.sha256(b"\x00" + leaf_input).digest()
        if self.leaves is not None:
            self.leaves[seq - current.batch.first_seq] = leaf
        else:
            self._included(seq, current.batch, leaf, audit_path)
        self._content(seq, record_id, customer_id, text, leaf_input, kind_tail)
        self._link(seq, customer_id, leaf_input[42:74], leaf)

    def _start_records(self) -> None:
        self.section = _Section.RECORDS
        self.batches.sort(key=lambda b: b.batch.first_seq)
        self.starts = [b.batch.first_seq for b in self.batches]

    def _enter_batch(self, seq: int) -> bool:
        """Move to the batch holding `seq` (finishing the one before); False when none does."""
        if self.current is not None and self.leaves is not None:
            _finish_complete(self.check, self.current, self.leaves)
        index = bisect.bisect_right(self.starts, seq) - 1
        current = self.batches[index] if index >= 0 else None
        if current is None or seq >= current.batch.first_seq + current.batch.count:
            self.check.fail(f"record seq {seq}: no batch of the bundle holds it")
            self.current = self.leaves = None
            self.batch_end = -1
            return False
        self.current = current
        self.batch_end = current.batch.first_seq + current.batch.count
        self.leaves = [None] * current.batch.count if current.complete else None
        self.visited.add(current.batch.id)
        return True

    def _bad_leaf_input(self, seq: int, leaf_input: bytes) -> None:
        fail = self.check.fail
        if leaf_input[0] != FORMAT_VERSION:
            fail(f"record seq {seq}: unknown leaf format version {leaf_input[0]}")
        if int.from_bytes(leaf_input[1:9], "big") != seq:
            fail(
                f"record seq {seq}: its leaf input is for seq "
                f"{int.from_bytes(leaf_input[1:9], 'big')}"
            )
        if leaf_input[9] not in _KIND_TAILS:
            fail(f"record seq {seq}: unknown record kind {leaf_input[9]} in its leaf input")

    def _included(
        self, seq: int, batch: BatchRef, leaf: bytes, audit_path: tuple[bytes, ...] | None
    ) -> None:
        """A record of an incomplete batch: its audit path must lead to the batch's root."""
        fail = self.check.fail
        if audit_path is None:
            fail(
                f"record seq {seq}: batch {batch.id} is not complete in the bundle, so the "
                "record needs an audit path"
            )
            return
        try:
            rebuilt = merkle.root_from_inclusion_proof(
                index=seq - batch.first_seq, tree_size=batch.count, leaf=leaf, proof=audit_path
            )
        except InvalidProof as exc:
            fail(f"record seq {seq}: inclusion: {exc}")
            return
        if rebuilt != batch.root:
            fail(
                f"record seq {seq}: inclusion: the audit path leads to "
                f"{hex0x(rebuilt)}, not to batch {batch.id}'s root {hex0x(batch.root)}"
            )

    def _content(
        self,
        seq: int,
        record_id: str | None,
        customer_id: str | None,
        text: str | None,
        leaf_input: bytes,
        kind_tail: bytes | None,
    ) -> None:
        """The content is the committed document of this record, and HMAC-SHA256(key,
        content) the commitment when the customer's key is in the bundle."""
        if self.only_customer is not None and customer_id != self.only_customer:
            self.check.fail(
                f"record seq {seq}: it is not a record of customer {self.only_customer}"
            )
        if text is None:
            if record_id is None and customer_id is None:
                self.erased += 1
            else:
                self.unchecked += 1
            return
        content = text.encode("utf-8", errors="surrogatepass")
        # A canonical document ends with its top-level members after "body", sorted, and the
        # last quote before `","v":1}` closes "recorded_at": so the last occurrence of this
        # tail is the top level's, not a look-alike inside "body".
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
            or not content.endswith(_DOCUMENT_END)
            or content.find(b'"', at + len(tail)) != len(content) - len(_DOCUMENT_END)
        ):
            self.check.fail(
                f"record seq {seq}: its content is not the version 1 document of "
                f"record {record_id}, customer {customer_id}, kind "
                f"{_KIND_NAMES.get(leaf_input[9], leaf_input[9])}"
            )
        key = self.keys.get(customer_id) if customer_id is not None else None
        if key is None:
            self.unchecked += 1
            return
        self.commitments += 1
        if hmac.digest(key, content, "sha256") != leaf_input[10:42]:
            self.check.fail(
                f"record seq {seq}: commitment: HMAC-SHA256(customer key, content) "
                f"is not the commitment {hex0x(leaf_input[10:42])} in its leaf input"
            )

    def _link(self, seq: int, customer_id: str | None, previous: bytes, leaf: bytes) -> None:
        """The record links to its customer's previous one (an erased customer's records
        still form a chain, tied to no one)."""
        if customer_id is not None:
            tip = self.tips.get(customer_id)
            if tip is None:
                if self.chain_from_start and previous != merkle.ZERO_HASH:
                    self.check.fail(
                        f"record seq {seq}: it is customer {customer_id}'s first record in "
                        f"the bundle but links to {hex0x(previous)}: an earlier record of "
                        "theirs is missing"
                    )
            elif previous != tip:
                self.check.fail(
                    f"record seq {seq}: it links to {hex0x(previous)}, not to the leaf of "
                    f"customer {customer_id}'s previous record {hex0x(tip)}"
                )
            self.tips[customer_id] = leaf
            return
        if self.all_scope and previous != merkle.ZERO_HASH:
            if previous not in self.unattributed_leaves or previous in self.used_previous:
                self.check.fail(
                    f"record seq {seq}: it links to {hex0x(previous)}, which is not the "
                    "leaf of an earlier record of its (erased) customer"
                )
            self.used_previous.add(previous)
        self.unattributed_leaves.add(leaf)

    def finish(self) -> tuple[BundleCheck, list[BundleBatch]]:
        """After the last line: the last batch, the batch chain and the announced counts."""
        check, batches = self.check, self.batches
        if self.current is not None and self.leaves is not None:
            _finish_complete(check, self.current, self.leaves)
        for entry in batches:
            if entry.complete and entry.batch.id not in self.visited:
                check.fail(
                    f"batch {entry.batch.id} is marked complete but the bundle holds none of "
                    "its records"
                )
        check.records = self.records
        check.commitments_checked = self.commitments
        check.content_unchecked = self.unchecked
        check.erased = self.erased
        check.batches = len(batches)
        if self.progress is not None:
            self.progress(self.records)
        _check_batches(check, self.header, batches)
        _check_counts(check, self.header, batches, self.keys, self.records, self.last_seq)
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
