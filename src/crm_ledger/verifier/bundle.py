"""Audit bundles, format `crm-ledger/bundle/v1`: one self-contained file an auditor verifies.

Exports: `BUNDLE_FORMAT`, `BundleHeader`, `BundleBatch`, `BundleKey`, `BundleRecord`,
`Scope`, `header_line`, `batch_line`, `key_line`, `record_line`, `parse_header`,
`parse_batch`, `parse_key`, `parse_record`, `MAX_LINE_BYTES`, `RECORD_FIELDS`.

A bundle is UTF-8 JSON Lines: one JSON object per line, in this order.

1. The header: `{"format": "crm-ledger/bundle/v1", "created_at", "scope", "includes_keys",
   "counts": {"batches", "keys", "records"}}`; `scope` is `{"kind": "all"}`,
   `{"kind": "customer", "customer_id"}` or `{"kind": "range", "from_seq", "to_seq"}`.
2. One line per batch, by id: `{"type": "batch", "batch": {...}, "chain": {...},
   "complete": bool}`; `batch` and `chain` are a receipt's objects (docs/ledger-format.md
   section 7). `complete` is true when every record of the batch is in the bundle: the verifier
   then rebuilds the root from the leaves, and the records carry no audit path.
3. One line per customer key: `{"type": "key", "customer_id", "key": "0x..."}` (only in
   bundles exported to auditors and admins).
4. One line per record, by seq: `{"type": "record", "seq", "record_id", "customer_id",
   "content", "leaf_input", "audit_path"}`. `content` is the canonical JSON text (its UTF-8
   bytes are what was committed), or null when erased; `record_id` and `customer_id` are null
   for the records of an erased customer, so nothing in a bundle ties them to the customer.
   `audit_path` is the RFC 9162 path (null in a complete batch).

Readers refuse anything else, naming the line and the field. Imports no database code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from crm_ledger.errors import FormatError
from crm_ledger.ledger.canonical import CUSTOMER_KEY_SIZE
from crm_ledger.ledger.hexcodec import describe_json as _describe
from crm_ledger.ledger.hexcodec import hex0x, unhex
from crm_ledger.ledger.leaf import LEAF_INPUT_SIZE, MAX_SEQ
from crm_ledger.ledger.receipts import MAX_AUDIT_PATH, BatchRef, ChainRef

BUNDLE_FORMAT = "crm-ledger/bundle/v1"
#: No line of a valid bundle comes near this (a record's content is at most 64 KiB of JSON).
MAX_LINE_BYTES = 1 << 20

_HEADER_FIELDS = frozenset({"format", "created_at", "scope", "includes_keys", "counts"})
_COUNT_FIELDS = frozenset({"batches", "keys", "records"})
_BATCH_FIELDS = frozenset({"type", "batch", "chain", "complete"})
_KEY_FIELDS = frozenset({"type", "customer_id", "key"})
RECORD_FIELDS = frozenset(
    {"type", "seq", "record_id", "customer_id", "content", "leaf_input", "audit_path"}
)


@dataclass(frozen=True, slots=True)
class Scope:
    """What a bundle covers: every anchored record, one customer's, or a seq range."""

    kind: str
    customer_id: str | None = None
    from_seq: int | None = None
    to_seq: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The header's `scope` object."""
        if self.kind == "customer":
            return {"kind": "customer", "customer_id": self.customer_id}
        if self.kind == "range":
            return {"kind": "range", "from_seq": self.from_seq, "to_seq": self.to_seq}
        return {"kind": "all"}


@dataclass(frozen=True, slots=True)
class BundleHeader:
    """The first line of a bundle."""

    created_at: str
    scope: Scope
    includes_keys: bool
    batches: int
    keys: int
    records: int


@dataclass(frozen=True, slots=True)
class BundleBatch:
    """A batch line."""

    batch: BatchRef
    chain: ChainRef
    complete: bool


@dataclass(frozen=True, slots=True)
class BundleKey:
    """A key line."""

    customer_id: str
    key: bytes


@dataclass(frozen=True, slots=True)
class BundleRecord:
    """A record line."""

    seq: int
    record_id: str | None
    customer_id: str | None
    content: str | None
    leaf_input: bytes
    audit_path: tuple[bytes, ...] | None


def _line(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def header_line(header: BundleHeader) -> bytes:
    """The bundle's first line."""
    return _line(
        {
            "format": BUNDLE_FORMAT,
            "created_at": header.created_at,
            "scope": header.scope.to_json(),
            "includes_keys": header.includes_keys,
            "counts": {"batches": header.batches, "keys": header.keys, "records": header.records},
        }
    )


def batch_line(batch: BundleBatch) -> bytes:
    """One batch line."""
    return _line(
        {
            "type": "batch",
            "batch": batch.batch.to_json(),
            "chain": batch.chain.to_json(),
            "complete": batch.complete,
        }
    )


def key_line(key: BundleKey) -> bytes:
    """One key line."""
    return _line({"type": "key", "customer_id": key.customer_id, "key": hex0x(key.key)})


def record_line(record: BundleRecord) -> bytes:
    """One record line."""
    return _line(
        {
            "type": "record",
            "seq": record.seq,
            "record_id": record.record_id,
            "customer_id": record.customer_id,
            "content": record.content,
            "leaf_input": hex0x(record.leaf_input),
            "audit_path": None
            if record.audit_path is None
            else [hex0x(node) for node in record.audit_path],
        }
    )


def parse_header(obj: object) -> BundleHeader:
    """Validate the first line; raises `FormatError` naming what is wrong."""
    if not isinstance(obj, dict):
        raise FormatError(f"bundle line 1 must be a JSON object, got {_describe(obj)}")
    if "format" not in obj:
        raise FormatError("bundle line 1 has no format: this is not a crm-ledger bundle")
    if obj["format"] != BUNDLE_FORMAT:
        raise FormatError(
            f"unknown bundle format {obj['format']!r}: this verifier reads {BUNDLE_FORMAT!r}"
        )
    _fields("header", obj, _HEADER_FIELDS)
    created_at = obj["created_at"]
    if not isinstance(created_at, str):
        raise FormatError(f"header.created_at must be a string, got {_describe(created_at)}")
    includes_keys = obj["includes_keys"]
    if not isinstance(includes_keys, bool):
        raise FormatError(
            f"header.includes_keys must be true or false, got {_describe(includes_keys)}"
        )
    counts = obj["counts"]
    if not isinstance(counts, dict):
        raise FormatError(f"header.counts must be an object, got {_describe(counts)}")
    _fields("header.counts", counts, _COUNT_FIELDS)
    return BundleHeader(
        created_at=created_at,
        scope=_scope(obj["scope"]),
        includes_keys=includes_keys,
        batches=_uint("header.counts.batches", counts["batches"]),
        keys=_uint("header.counts.keys", counts["keys"]),
        records=_uint("header.counts.records", counts["records"]),
    )


def _scope(obj: object) -> Scope:
    if not isinstance(obj, dict):
        raise FormatError(f"header.scope must be an object, got {_describe(obj)}")
    kind = obj.get("kind")
    if kind == "all":
        _fields("header.scope", obj, frozenset({"kind"}))
        return Scope("all")
    if kind == "customer":
        _fields("header.scope", obj, frozenset({"kind", "customer_id"}))
        return Scope("customer", customer_id=_text("header.scope.customer_id", obj["customer_id"]))
    if kind == "range":
        _fields("header.scope", obj, frozenset({"kind", "from_seq", "to_seq"}))
        from_seq = _uint("header.scope.from_seq", obj["from_seq"])
        to_seq = _uint("header.scope.to_seq", obj["to_seq"])
        if to_seq < from_seq:
            raise FormatError(f"header.scope.to_seq {to_seq} is before from_seq {from_seq}")
        return Scope("range", from_seq=from_seq, to_seq=to_seq)
    raise FormatError(
        f"header.scope.kind must be 'all', 'customer' or 'range', got {_describe(kind)}"
    )


def parse_batch(obj: dict[str, Any], where: str) -> BundleBatch:
    """Validate a batch line (`where` names it in errors, e.g. "line 2")."""
    _fields(where, obj, _BATCH_FIELDS)
    complete = obj["complete"]
    if not isinstance(complete, bool):
        raise FormatError(f"{where}.complete must be true or false, got {_describe(complete)}")
    batch = BatchRef.from_json(obj["batch"], field=f"{where}.batch")
    if batch.count == 0:
        raise FormatError(f"{where}.batch.count must be at least 1")
    chain = ChainRef.from_json(obj["chain"], field=f"{where}.chain")
    return BundleBatch(batch=batch, chain=chain, complete=complete)


def parse_key(obj: dict[str, Any], where: str) -> BundleKey:
    """Validate a key line."""
    _fields(where, obj, _KEY_FIELDS)
    return BundleKey(
        customer_id=_text(f"{where}.customer_id", obj["customer_id"]),
        key=unhex(f"{where}.key", obj["key"], CUSTOMER_KEY_SIZE),
    )


def parse_record(obj: dict[str, Any], where: str) -> BundleRecord:
    """Validate a record line; the hot path of verification, so checks are inline."""
    if obj.keys() != RECORD_FIELDS:
        _fields(where, obj, RECORD_FIELDS)
    seq = obj["seq"]
    if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
        raise FormatError(
            f"{where}.seq must be an integer from 0 to {MAX_SEQ}, got {_describe(seq)}"
        )
    record_id = obj["record_id"]
    customer_id = obj["customer_id"]
    content = obj["content"]
    if record_id is not None and type(record_id) is not str:
        raise FormatError(f"{where}.record_id must be a string or null, got {_describe(record_id)}")
    if customer_id is not None and type(customer_id) is not str:
        raise FormatError(
            f"{where}.customer_id must be a string or null, got {_describe(customer_id)}"
        )
    if content is not None and type(content) is not str:
        raise FormatError(
            f"{where}.content must be the canonical JSON text (a string) or null, got "
            f"{_describe(content)}"
        )
    path = obj["audit_path"]
    audit_path: tuple[bytes, ...] | None = None
    if path is not None:
        if type(path) is not list or len(path) > MAX_AUDIT_PATH:
            raise FormatError(
                f"{where}.audit_path must be null or an array of at most {MAX_AUDIT_PATH} "
                f"hashes, got {_describe(path)}"
            )
        audit_path = tuple(unhex(f"{where}.audit_path[{i}]", h, 32) for i, h in enumerate(path))
    return BundleRecord(
        seq=seq,
        record_id=record_id,
        customer_id=customer_id,
        content=content,
        leaf_input=unhex(f"{where}.leaf_input", obj["leaf_input"], LEAF_INPUT_SIZE),
        audit_path=audit_path,
    )


def _fields(where: str, obj: Mapping[str, Any], allowed: frozenset[str]) -> None:
    missing = sorted(allowed - obj.keys())
    if missing:
        raise FormatError(f"{where}.{missing[0]} is missing")
    unknown = sorted(str(key) for key in obj.keys() - allowed)
    if unknown:
        raise FormatError(
            f"{where} has unknown field {unknown[0]!r}; {BUNDLE_FORMAT} allows only "
            + ", ".join(sorted(allowed))
        )


def _uint(where: str, value: object) -> int:
    if type(value) is not int or not 0 <= value <= MAX_SEQ:
        raise FormatError(f"{where} must be an integer from 0 to {MAX_SEQ}, got {_describe(value)}")
    return value


def _text(where: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise FormatError(f"{where} must be a non-empty string, got {_describe(value)}")
    return value
