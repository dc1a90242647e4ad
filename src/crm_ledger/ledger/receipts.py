"""Receipts, format "crm-ledger/receipt/v1": self-contained proof that a record is in the ledger.

Exports: `RECEIPT_FORMAT`, `Receipt`, `BatchRef`, `ChainRef`, `Step`, `check_receipt`,
`json_object` (the check of a JSON object's fields, also for digests). Bytes
are spelled as `ledger.hexcodec` spells them.

A receipt carries the record's leaf input, its RFC 9162 audit path inside its batch's tree, the
batch (first seq, count, root, previous and new running head) and where the batch was anchored.
`Receipt.from_json` refuses anything that is not exactly a v1 receipt; `check_receipt` re-derives
everything that can be checked without the chain (the chain is checked elsewhere). Pure: no I/O.
docs/ledger-format.md describes every field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eth_utils.address import to_checksum_address

from crm_ledger.errors import FormatError, InvalidProof
from crm_ledger.ledger.canonical import commitment
from crm_ledger.ledger.hexcodec import describe_json as _describe
from crm_ledger.ledger.hexcodec import hex0x, unhex
from crm_ledger.ledger.leaf import LEAF_INPUT_SIZE, MAX_SEQ, LeafInput
from crm_ledger.ledger.merkle import HASH_SIZE, leaf_hash, next_head, root_from_inclusion_proof

RECEIPT_FORMAT = "crm-ledger/receipt/v1"

ADDRESS_SIZE = 20
MAX_UINT32 = 2**32 - 1
MAX_UINT256 = 2**256 - 1
# A batch holds at most 2**32 - 1 leaves (count is a uint32 on chain), so no path is longer.
MAX_AUDIT_PATH = 32

_RECEIPT_FIELDS = (
    "format",
    "record_id",
    "seq",
    "leaf_input",
    "leaf_hash",
    "leaf_index",
    "tree_size",
    "audit_path",
    "batch",
    "chain",
)
_BATCH_FIELDS = ("id", "first_seq", "count", "root", "previous_head", "head")
_CHAIN_FIELDS = ("chain_id", "contract", "epoch", "tx_hash", "block_number", "block_hash")


@dataclass(frozen=True, slots=True)
class BatchRef:
    """The batch a receipt's leaf belongs to, as anchored on chain."""

    id: int
    first_seq: int
    count: int
    root: bytes
    previous_head: bytes
    head: bytes

    def to_json(self) -> dict[str, Any]:
        """The receipt's "batch" object."""
        return {
            "id": self.id,
            "first_seq": self.first_seq,
            "count": self.count,
            "root": hex0x(self.root),
            "previous_head": hex0x(self.previous_head),
            "head": hex0x(self.head),
        }

    @classmethod
    def from_json(cls, obj: object, *, field: str = "receipt.batch") -> BatchRef:
        """Parse and validate a "batch" object; raises `FormatError` naming the bad field."""
        fields = json_object(field, obj, _BATCH_FIELDS)
        return cls(
            id=_uint(f"{field}.id", fields["id"], MAX_UINT256),
            first_seq=_uint(f"{field}.first_seq", fields["first_seq"], MAX_SEQ),
            count=_uint(f"{field}.count", fields["count"], MAX_UINT32),
            root=unhex(f"{field}.root", fields["root"], HASH_SIZE),
            previous_head=unhex(f"{field}.previous_head", fields["previous_head"], HASH_SIZE),
            head=unhex(f"{field}.head", fields["head"], HASH_SIZE),
        )


@dataclass(frozen=True, slots=True)
class ChainRef:
    """Where a batch was anchored: chain, contract (EIP-55), ledger epoch, transaction, block."""

    chain_id: int
    contract: str
    epoch: int
    tx_hash: bytes
    block_number: int
    block_hash: bytes

    def to_json(self) -> dict[str, Any]:
        """The receipt's "chain" object."""
        return {
            "chain_id": self.chain_id,
            "contract": self.contract,
            "epoch": self.epoch,
            "tx_hash": hex0x(self.tx_hash),
            "block_number": self.block_number,
            "block_hash": hex0x(self.block_hash),
        }

    @classmethod
    def from_json(cls, obj: object, *, field: str = "receipt.chain") -> ChainRef:
        """Parse and validate a "chain" object; raises `FormatError` naming the bad field."""
        fields = json_object(field, obj, _CHAIN_FIELDS)
        return cls(
            chain_id=_uint(f"{field}.chain_id", fields["chain_id"], MAX_UINT256),
            contract=_checksummed_address(f"{field}.contract", fields["contract"]),
            epoch=_uint(f"{field}.epoch", fields["epoch"], MAX_SEQ),
            tx_hash=unhex(f"{field}.tx_hash", fields["tx_hash"], HASH_SIZE),
            block_number=_uint(f"{field}.block_number", fields["block_number"], MAX_SEQ),
            block_hash=unhex(f"{field}.block_hash", fields["block_hash"], HASH_SIZE),
        )


@dataclass(frozen=True, slots=True)
class Receipt:
    """Proof that a record is leaf `leaf_index` of its batch's tree, and where that was anchored."""

    record_id: str
    seq: int
    leaf_input: bytes
    leaf_hash: bytes
    leaf_index: int
    tree_size: int
    audit_path: tuple[bytes, ...]
    batch: BatchRef
    chain: ChainRef

    def to_json(self) -> dict[str, Any]:
        """The receipt as a JSON-ready dict, fields in documented order."""
        return {
            "format": RECEIPT_FORMAT,
            "record_id": self.record_id,
            "seq": self.seq,
            "leaf_input": hex0x(self.leaf_input),
            "leaf_hash": hex0x(self.leaf_hash),
            "leaf_index": self.leaf_index,
            "tree_size": self.tree_size,
            "audit_path": [hex0x(node) for node in self.audit_path],
            "batch": self.batch.to_json(),
            "chain": self.chain.to_json(),
        }

    @classmethod
    def from_json(cls, obj: object) -> Receipt:
        """Parse and validate a receipt; raises `FormatError` naming the first bad field."""
        fields = json_object("receipt", obj, _RECEIPT_FIELDS)
        format_ = fields["format"]
        if format_ != RECEIPT_FORMAT:
            raise FormatError(
                f"receipt.format must be {RECEIPT_FORMAT!r}, got {_describe(format_)}: "
                "this build reads only that receipt format"
            )
        record_id = fields["record_id"]
        if not isinstance(record_id, str) or not record_id:
            raise FormatError(
                f"receipt.record_id must be a non-empty string, got {_describe(record_id)}"
            )
        return cls(
            record_id=record_id,
            seq=_uint("receipt.seq", fields["seq"], MAX_SEQ),
            leaf_input=unhex("receipt.leaf_input", fields["leaf_input"], LEAF_INPUT_SIZE),
            leaf_hash=unhex("receipt.leaf_hash", fields["leaf_hash"], HASH_SIZE),
            leaf_index=_uint("receipt.leaf_index", fields["leaf_index"], MAX_UINT32),
            tree_size=_uint("receipt.tree_size", fields["tree_size"], MAX_UINT32),
            audit_path=_audit_path("receipt.audit_path", fields["audit_path"]),
            batch=BatchRef.from_json(fields["batch"]),
            chain=ChainRef.from_json(fields["chain"]),
        )


@dataclass(frozen=True, slots=True)
class Step:
    """One check of a receipt: its name, whether it held, and what was compared."""

    name: str
    ok: bool
    detail: str


def check_receipt(
    receipt: Receipt, *, content: bytes | None = None, customer_key: bytes | None = None
) -> list[Step]:
    """Re-derive everything in `receipt` that needs no chain, one `Step` per check, in order.

    Steps: leaf_input, leaf_hash, position, inclusion, head, and commitment when the record's
    canonical `content` bytes and the `customer_key` are given (pass both or neither). A failed
    step does not stop the others, so a report shows every problem at once. For example::

        receipt = Receipt.from_json(json.loads(receipt_text))
        steps = check_receipt(receipt, content=stored_canonical_bytes, customer_key=key)
        trusted = all(step.ok for step in steps)  # and the chain module agrees
    """
    if (content is None) != (customer_key is None):
        raise ValueError("pass both content and customer_key to check the commitment, or neither")
    decoded, leaf_input_step = _check_leaf_input(receipt)
    computed_leaf_hash = leaf_hash(receipt.leaf_input)
    steps = [
        leaf_input_step,
        _check_leaf_hash(receipt, computed_leaf_hash),
        _check_position(receipt),
        _check_inclusion(receipt, computed_leaf_hash),
        _check_head(receipt.batch),
    ]
    if content is not None and customer_key is not None:
        steps.append(_check_commitment(decoded, content, customer_key))
    return steps


def _check_leaf_input(receipt: Receipt) -> tuple[LeafInput | None, Step]:
    try:
        decoded = LeafInput.decode(receipt.leaf_input)
    except FormatError as exc:
        return None, Step("leaf_input", False, str(exc))
    if decoded.seq != receipt.seq:
        detail = f"the leaf input says seq {decoded.seq}, the receipt says seq {receipt.seq}"
        return decoded, Step("leaf_input", False, detail)
    detail = (
        f"format version {decoded.version}, seq {decoded.seq}, kind {decoded.kind.name.lower()}"
    )
    return decoded, Step("leaf_input", True, detail)


def _check_leaf_hash(receipt: Receipt, computed: bytes) -> Step:
    if computed != receipt.leaf_hash:
        detail = (
            f"SHA-256(0x00 ‖ leaf_input) is {hex0x(computed)}, "
            f"the receipt says {hex0x(receipt.leaf_hash)}"
        )
        return Step("leaf_hash", False, detail)
    return Step("leaf_hash", True, f"SHA-256(0x00 ‖ leaf_input) = {hex0x(computed)}")


def _check_position(receipt: Receipt) -> Step:
    batch = receipt.batch
    expected_index = receipt.seq - batch.first_seq
    problems = []
    if receipt.leaf_index != expected_index:
        problems.append(
            f"leaf_index {receipt.leaf_index} is not seq {receipt.seq} - first_seq "
            f"{batch.first_seq} = {expected_index}"
        )
    if receipt.tree_size != batch.count:
        problems.append(f"tree_size {receipt.tree_size} is not the batch count {batch.count}")
    if receipt.leaf_index >= receipt.tree_size:
        problems.append(
            f"leaf_index {receipt.leaf_index} is outside a tree of {receipt.tree_size} leaves"
        )
    if problems:
        return Step("position", False, "; ".join(problems))
    detail = (
        f"seq {receipt.seq} is leaf {receipt.leaf_index} of the {batch.count} leaves "
        f"from seq {batch.first_seq}"
    )
    return Step("position", True, detail)


def _check_inclusion(receipt: Receipt, computed_leaf_hash: bytes) -> Step:
    try:
        calculated = root_from_inclusion_proof(
            index=receipt.leaf_index,
            tree_size=receipt.tree_size,
            leaf=computed_leaf_hash,
            proof=receipt.audit_path,
        )
    except InvalidProof as exc:
        return Step("inclusion", False, str(exc))
    if calculated != receipt.batch.root:
        detail = (
            f"the audit path leads to {hex0x(calculated)}, "
            f"the batch root is {hex0x(receipt.batch.root)}"
        )
        return Step("inclusion", False, detail)
    detail = f"the audit path of {len(receipt.audit_path)} hashes leads to the batch root"
    return Step("inclusion", True, detail)


def _check_head(batch: BatchRef) -> Step:
    calculated = next_head(batch.previous_head, batch.root, batch.first_seq, batch.count)
    if calculated != batch.head:
        detail = (
            f"SHA-256(previous_head ‖ root ‖ first_seq ‖ count) is {hex0x(calculated)}, "
            f"the receipt says {hex0x(batch.head)}"
        )
        return Step("head", False, detail)
    return Step(
        "head", True, f"SHA-256(previous_head ‖ root ‖ first_seq ‖ count) = {hex0x(calculated)}"
    )


def _check_commitment(decoded: LeafInput | None, content: bytes, customer_key: bytes) -> Step:
    if decoded is None:
        return Step("commitment", False, "the leaf input does not decode, so it has no commitment")
    try:
        calculated = commitment(customer_key, content)
    except FormatError as exc:
        return Step("commitment", False, str(exc))
    if calculated != decoded.commitment:
        detail = (
            f"HMAC-SHA256(customer key, content) is {hex0x(calculated)}, "
            f"the leaf input commits to {hex0x(decoded.commitment)}"
        )
        return Step("commitment", False, detail)
    return Step("commitment", True, f"HMAC-SHA256(customer key, content) = {hex0x(calculated)}")


def json_object(
    field: str, value: object, keys: Sequence[str], *, document: str = RECEIPT_FORMAT
) -> Mapping[str, object]:
    """`value` if it is a JSON object with exactly `keys`; else a `FormatError` naming `field`
    and what `document` (a format name) allows."""
    if not isinstance(value, dict):
        raise FormatError(f"{field} must be a JSON object, got {_describe(value)}")
    for key in keys:
        if key not in value:
            raise FormatError(f"{field}.{key} is missing")
    unknown = sorted(repr(key) for key in value if key not in keys)
    if unknown:
        raise FormatError(
            f"{field} has unknown field {unknown[0]}; {document} allows only " + ", ".join(keys)
        )
    return value


def _uint(field: str, value: object, maximum: int) -> int:
    # bool is an int in Python, but `true` is not a number in JSON.
    if not isinstance(value, int) or isinstance(value, bool):
        raise FormatError(f"{field} must be an integer from 0 to {maximum}, got {_describe(value)}")
    if not 0 <= value <= maximum:
        raise FormatError(f"{field} must be an integer from 0 to {maximum}, got {value}")
    return value


def _audit_path(field: str, value: object) -> tuple[bytes, ...]:
    if not isinstance(value, list):
        raise FormatError(f"{field} must be an array of 0x-hex hashes, got {_describe(value)}")
    if len(value) > MAX_AUDIT_PATH:
        raise FormatError(
            f"{field} has {len(value)} hashes; no batch is deep enough for more than "
            f"{MAX_AUDIT_PATH}"
        )
    return tuple(unhex(f"{field}[{i}]", node, HASH_SIZE) for i, node in enumerate(value))


def _checksummed_address(field: str, value: object) -> str:
    raw = unhex(field, value, ADDRESS_SIZE)
    checksummed = str(to_checksum_address(raw))
    if value != checksummed:
        raise FormatError(
            f"{field} must be an EIP-55 checksummed address: {value!r} should be written "
            f"{checksummed!r}"
        )
    return checksummed
