"""Receipt format v1: parsing, validation messages and the chain-free checks.

tests/vectors/receipts.json is the worked example of docs/ledger-format.md; its hashes are
re-derived here with hashlib, hmac and struct, not with the ledger modules.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import hmac
import json
import re
import struct
from pathlib import Path
from typing import Any

import pytest

from crm_ledger.errors import FormatError
from crm_ledger.ledger import merkle
from crm_ledger.ledger.canonical import canonical_json
from crm_ledger.ledger.leaf import LeafInput, RecordKind
from crm_ledger.ledger.receipts import (
    RECEIPT_FORMAT,
    BatchRef,
    ChainRef,
    Receipt,
    Step,
    check_receipt,
    hex0x,
    unhex,
)

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "vectors" / "receipts.json").read_text(encoding="utf-8")
)
RECORDS: list[dict[str, Any]] = VECTORS["records"]
ALL_STEPS = ["leaf_input", "leaf_hash", "position", "inclusion", "head", "commitment"]


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def from_0x(value: str) -> bytes:
    assert value.startswith("0x")
    return bytes.fromhex(value[2:])


def example(seq: int) -> tuple[Receipt, bytes, bytes]:
    """The worked example's receipt for `seq`, its canonical content and its customer key."""
    record = RECORDS[seq]
    return (
        Receipt.from_json(record["receipt"]),
        bytes.fromhex(record["content_canonical"]),
        bytes.fromhex(record["key"]),
    )


def failed(steps: list[Step]) -> list[str]:
    return [step.name for step in steps if not step.ok]


# --- the worked example, by hand


def test_worked_example_by_hand() -> None:
    leaf_inputs = [from_0x(record["receipt"]["leaf_input"]) for record in RECORDS]
    previous_by_customer: dict[str, bytes] = {}
    for seq, (record, leaf_input) in enumerate(zip(RECORDS, leaf_inputs, strict=True)):
        content = bytes.fromhex(record["content_canonical"])
        key = bytes.fromhex(record["key"])
        version, leaf_seq, kind, committed, previous = struct.unpack(">BQB32s32s", leaf_input)
        assert (version, leaf_seq) == (1, seq)
        assert kind == {"interaction": 1, "order": 2, "erasure": 3}[record["content"]["kind"]]
        assert committed == hmac.new(key, content, hashlib.sha256).digest()
        customer = record["content"]["customer_id"]
        assert previous == previous_by_customer.get(customer, bytes(32))
        previous_by_customer[customer] = sha256(b"\x00" + leaf_input)

    hashes = [sha256(b"\x00" + leaf_input) for leaf_input in leaf_inputs]
    left = sha256(b"\x01" + hashes[0] + hashes[1])
    root = sha256(b"\x01" + left + hashes[2])
    head = sha256(bytes(32) + root + struct.pack(">QI", 0, 3))
    audit_paths = [[hashes[1], hashes[2]], [hashes[0], hashes[2]], [left]]
    for seq, record in enumerate(RECORDS):
        receipt = record["receipt"]
        assert receipt["leaf_hash"] == hex0x(hashes[seq])
        assert receipt["audit_path"] == [hex0x(node) for node in audit_paths[seq]]
        assert receipt["batch"]["root"] == hex0x(root)
        assert receipt["batch"]["previous_head"] == hex0x(bytes(32))
        assert receipt["batch"]["head"] == hex0x(head)


@pytest.mark.parametrize("seq", range(len(RECORDS)))
def test_worked_example_content_is_canonical(seq: int) -> None:
    record = RECORDS[seq]
    assert canonical_json(record["content"]).hex() == record["content_canonical"]
    assert set(record["content"]) == {"v", "id", "customer_id", "kind", "recorded_at", "body"}
    assert record["content"]["id"] == record["receipt"]["record_id"]


@pytest.mark.parametrize("seq", range(len(RECORDS)))
def test_worked_example_receipts_pass_every_step(seq: int) -> None:
    receipt, content, key = example(seq)
    steps = check_receipt(receipt, content=content, customer_key=key)
    assert [step.name for step in steps] == ALL_STEPS
    assert failed(steps) == []
    assert all(step.detail for step in steps)


@pytest.mark.parametrize("seq", range(len(RECORDS)))
def test_to_json_gives_back_the_vector_exactly(seq: int) -> None:
    receipt, _, _ = example(seq)
    assert receipt.to_json() == RECORDS[seq]["receipt"]
    assert list(receipt.to_json()) == [
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
    ]
    assert Receipt.from_json(json.loads(json.dumps(receipt.to_json()))) == receipt


def test_without_content_the_commitment_is_not_checked() -> None:
    receipt, _, _ = example(0)
    steps = check_receipt(receipt)
    assert [step.name for step in steps] == ALL_STEPS[:-1]
    assert failed(steps) == []


@pytest.mark.parametrize(
    ("content", "key"), [(b"{}", None), (None, bytes(32))], ids=["content only", "key only"]
)
def test_content_and_key_come_together(content: bytes | None, key: bytes | None) -> None:
    receipt, _, _ = example(0)
    with pytest.raises(ValueError, match="both content and customer_key"):
        check_receipt(receipt, content=content, customer_key=key)


# --- tampering: each change fails exactly the steps that can see it


def flip_first_bit(value: bytes) -> bytes:
    return bytes([value[0] ^ 0x80]) + value[1:]


def tampered_batch(receipt: Receipt, **changes: Any) -> Receipt:
    return dataclasses.replace(receipt, batch=dataclasses.replace(receipt.batch, **changes))


TAMPERING = [
    ("seq", lambda r: dataclasses.replace(r, seq=r.seq + 1), ["leaf_input", "position"]),
    (
        "leaf input commitment byte",
        lambda r: dataclasses.replace(
            r, leaf_input=r.leaf_input[:20] + b"\x00" + r.leaf_input[21:]
        ),
        ["leaf_hash", "inclusion", "commitment"],
    ),
    (
        "leaf input kind byte",
        lambda r: dataclasses.replace(r, leaf_input=r.leaf_input[:9] + b"\x09" + r.leaf_input[10:]),
        ["leaf_input", "leaf_hash", "inclusion", "commitment"],
    ),
    (
        "leaf hash",
        lambda r: dataclasses.replace(r, leaf_hash=flip_first_bit(r.leaf_hash)),
        ["leaf_hash"],
    ),
    ("leaf index", lambda r: dataclasses.replace(r, leaf_index=1), ["position", "inclusion"]),
    ("tree size", lambda r: dataclasses.replace(r, tree_size=4), ["position", "inclusion"]),
    (
        "audit path element",
        lambda r: dataclasses.replace(r, audit_path=(flip_first_bit(r.audit_path[0]),)),
        ["inclusion"],
    ),
    (
        "audit path extra element",
        lambda r: dataclasses.replace(r, audit_path=(*r.audit_path, r.batch.root)),
        ["inclusion"],
    ),
    ("audit path empty", lambda r: dataclasses.replace(r, audit_path=()), ["inclusion"]),
    (
        "batch root",
        lambda r: tampered_batch(r, root=flip_first_bit(r.batch.root)),
        ["inclusion", "head"],
    ),
    ("batch head", lambda r: tampered_batch(r, head=flip_first_bit(r.batch.head)), ["head"]),
    (
        "batch previous head",
        lambda r: tampered_batch(r, previous_head=flip_first_bit(r.batch.previous_head)),
        ["head"],
    ),
    ("batch first seq", lambda r: tampered_batch(r, first_seq=1), ["position", "head"]),
    ("batch count", lambda r: tampered_batch(r, count=4), ["position", "head"]),
]


@pytest.mark.parametrize(("what", "tamper", "expected"), TAMPERING, ids=[t[0] for t in TAMPERING])
def test_tampering_fails_the_right_steps(what: str, tamper: Any, expected: list[str]) -> None:
    receipt, content, key = example(2)
    steps = check_receipt(tamper(receipt), content=content, customer_key=key)
    assert [step.name for step in steps] == ALL_STEPS
    assert failed(steps) == expected
    for step in steps:
        assert step.detail, step.name


def test_other_content_fails_only_the_commitment() -> None:
    receipt, content, key = example(2)
    other = content.replace(b'"9.00"', b'"0.90"')
    assert other != content
    steps = check_receipt(receipt, content=other, customer_key=key)
    assert failed(steps) == ["commitment"]
    assert "the leaf input commits to" in steps[-1].detail


def test_another_customers_key_fails_only_the_commitment() -> None:
    receipt, content, _ = example(2)
    other_key = bytes.fromhex(RECORDS[1]["key"])
    assert failed(check_receipt(receipt, content=content, customer_key=other_key)) == ["commitment"]


def test_a_key_of_the_wrong_size_is_a_failed_step_not_a_crash() -> None:
    receipt, content, _ = example(2)
    steps = check_receipt(receipt, content=content, customer_key=bytes(16))
    assert failed(steps) == ["commitment"]
    assert steps[-1].detail == "a customer key is 32 bytes, got 16"


def test_failed_steps_say_what_was_compared() -> None:
    receipt, _, _ = example(2)
    steps = check_receipt(dataclasses.replace(receipt, seq=7, leaf_index=5))
    by_name = {step.name: step for step in steps}
    assert by_name["leaf_input"].detail == "the leaf input says seq 2, the receipt says seq 7"
    assert "leaf_index 5 is not seq 7 - first_seq 0 = 7" in by_name["position"].detail
    assert "outside a tree of 3 leaves" in by_name["position"].detail
    assert "outside a tree of 3 leaves" in by_name["inclusion"].detail


# --- receipts for every leaf of batches of 1 to 16 leaves


def build_batch(first_seq: int, count: int, previous_head: bytes) -> list[tuple[Receipt, bytes]]:
    key = bytes(range(32))
    contents = [canonical_json({"v": 1, "n": first_seq + i}) for i in range(count)]
    leaf_inputs = [
        LeafInput(
            seq=first_seq + i,
            kind=RecordKind.ORDER,
            commitment=hmac.new(key, content, hashlib.sha256).digest(),
        ).encode()
        for i, content in enumerate(contents)
    ]
    hashes = [merkle.leaf_hash(leaf_input) for leaf_input in leaf_inputs]
    root = merkle.root(hashes)
    batch = BatchRef(
        id=7,
        first_seq=first_seq,
        count=count,
        root=root,
        previous_head=previous_head,
        head=merkle.next_head(previous_head, root, first_seq, count),
    )
    chain = ChainRef(
        chain_id=1,
        contract="0x5FbDB2315678afecb367f032d93F642f64180aa3",
        epoch=2,
        tx_hash=bytes(range(32)),
        block_number=99,
        block_hash=bytes(range(1, 33)),
    )
    return [
        (
            Receipt(
                record_id=f"record-{first_seq + i}",
                seq=first_seq + i,
                leaf_input=leaf_inputs[i],
                leaf_hash=hashes[i],
                leaf_index=i,
                tree_size=count,
                audit_path=tuple(merkle.inclusion_proof(hashes, i)),
                batch=batch,
                chain=chain,
            ),
            contents[i],
        )
        for i in range(count)
    ]


@pytest.mark.parametrize("count", range(1, 17))
def test_every_receipt_of_a_batch_checks_out_through_json_text(count: int) -> None:
    for receipt, content in build_batch(1000, count, sha256(b"earlier head")):
        parsed = Receipt.from_json(json.loads(json.dumps(receipt.to_json())))
        assert parsed == receipt
        steps = check_receipt(parsed, content=content, customer_key=bytes(range(32)))
        assert failed(steps) == []


# --- from_json: every field is validated, and the message names it


def mutate(path: str, value: Any) -> dict[str, Any]:
    """The seq 2 receipt with `path` (dotted) set to `value`, or deleted when value is DELETE."""
    receipt: dict[str, Any] = copy.deepcopy(RECORDS[2]["receipt"])
    *parents, last = path.split(".")
    target = receipt
    for part in parents:
        target = target[part]
    if value is DELETE:
        del target[last]
    else:
        target[last] = value
    return receipt


DELETE = object()
H31 = "0x" + "ab" * 31
H32 = "0x" + "ab" * 32

BAD_RECEIPTS = [
    ("batch.root", H31, "receipt.batch.root must be 32 bytes of 0x-hex, got 31"),
    ("batch.head", "0x" + "ab" * 33, "receipt.batch.head must be 32 bytes of 0x-hex, got 33"),
    (
        "batch.previous_head",
        0,
        "receipt.batch.previous_head must be 32 bytes of 0x-hex, got a number",
    ),
    ("leaf_input", "0x" + "00" * 73, "receipt.leaf_input must be 74 bytes of 0x-hex, got 73"),
    ("leaf_hash", "ab" * 32, "receipt.leaf_hash must be 32 bytes of 0x-hex, got 'abab"),
    ("leaf_hash", "0x" + "zz" * 32, "receipt.leaf_hash must be 32 bytes of 0x-hex, got '0xzz"),
    (
        "leaf_hash",
        "0x" + "a" * 63,
        "receipt.leaf_hash must be 32 bytes of 0x-hex, got an odd number of hex digits (63)",
    ),
    ("leaf_hash", "0x " + "ab" * 32, "receipt.leaf_hash must be 32 bytes of 0x-hex"),
    ("leaf_hash", None, "receipt.leaf_hash must be 32 bytes of 0x-hex, got null"),
    ("seq", -1, "receipt.seq must be an integer from 0 to 18446744073709551615, got -1"),
    ("seq", 2**64, "receipt.seq must be an integer from 0 to 18446744073709551615, got 1844"),
    ("seq", True, "receipt.seq must be an integer from 0 to 18446744073709551615, got a boolean"),
    ("seq", "2", "receipt.seq must be an integer from 0 to 18446744073709551615, got a string"),
    ("seq", 2.0, "receipt.seq must be an integer from 0 to 18446744073709551615, got a number"),
    ("leaf_index", -1, "receipt.leaf_index must be an integer from 0 to 4294967295, got -1"),
    ("tree_size", 2**32, "receipt.tree_size must be an integer from 0 to 4294967295"),
    ("batch.count", 2**32, "receipt.batch.count must be an integer from 0 to 4294967295"),
    ("batch.first_seq", -3, "receipt.batch.first_seq must be an integer"),
    ("batch.id", 2**256, "receipt.batch.id must be an integer from 0 to"),
    ("format", "crm-ledger/receipt/v2", "receipt.format must be 'crm-ledger/receipt/v1', got a"),
    ("format", None, "receipt.format must be 'crm-ledger/receipt/v1', got null"),
    ("record_id", "", "receipt.record_id must be a non-empty string"),
    ("record_id", 12, "receipt.record_id must be a non-empty string, got a number"),
    ("audit_path", H32, "receipt.audit_path must be an array of 0x-hex hashes, got a string"),
    ("audit_path", [H31], "receipt.audit_path[0] must be 32 bytes of 0x-hex, got 31"),
    ("audit_path", [H32, 5], "receipt.audit_path[1] must be 32 bytes of 0x-hex, got a number"),
    ("audit_path", [H32] * 33, "receipt.audit_path has 33 hashes"),
    ("batch", [], "receipt.batch must be a JSON object, got an array"),
    ("chain", None, "receipt.chain must be a JSON object, got null"),
    ("batch.head", DELETE, "receipt.batch.head is missing"),
    ("chain.block_hash", DELETE, "receipt.chain.block_hash is missing"),
    ("leaf_input", DELETE, "receipt.leaf_input is missing"),
    ("batch.extra", 1, "receipt.batch has unknown field 'extra'"),
    ("comment", "hi", "receipt has unknown field 'comment'"),
    (
        "chain.contract",
        "0x5fbdb2315678afecb367f032d93f642f64180aa3",
        "receipt.chain.contract must be an EIP-55 checksummed address: "
        "'0x5fbdb2315678afecb367f032d93f642f64180aa3' should be written "
        "'0x5FbDB2315678afecb367f032d93F642f64180aa3'",
    ),
    (
        "chain.contract",
        "0x" + "ab" * 19,
        "receipt.chain.contract must be 20 bytes of 0x-hex, got 19",
    ),
    ("chain.chain_id", None, "receipt.chain.chain_id must be an integer from 0 to"),
    ("chain.epoch", -1, "receipt.chain.epoch must be an integer"),
    ("chain.tx_hash", H31, "receipt.chain.tx_hash must be 32 bytes of 0x-hex, got 31"),
    ("chain.block_number", "2", "receipt.chain.block_number must be an integer"),
]


@pytest.mark.parametrize(
    ("path", "value", "message"),
    BAD_RECEIPTS,
    ids=[f"{path}={value!r}"[:60] for path, value, _ in BAD_RECEIPTS],
)
def test_from_json_names_the_bad_field(path: str, value: Any, message: str) -> None:
    with pytest.raises(FormatError, match="^" + re.escape(message)):
        Receipt.from_json(mutate(path, value))


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([], "receipt must be a JSON object, got an array"),
        ("{}", "receipt must be a JSON object, got a string"),
        (None, "receipt must be a JSON object, got null"),
        ({}, "receipt.format is missing"),
    ],
)
def test_from_json_needs_an_object(obj: object, message: str) -> None:
    with pytest.raises(FormatError, match="^" + re.escape(message)):
        Receipt.from_json(obj)


def test_from_json_accepts_upper_case_hex_and_writes_lower_case() -> None:
    upper = mutate("batch.root", "0x" + RECORDS[2]["receipt"]["batch"]["root"][2:].upper())
    assert Receipt.from_json(upper).to_json() == RECORDS[2]["receipt"]


def test_receipt_format_string() -> None:
    assert RECEIPT_FORMAT == "crm-ledger/receipt/v1"
    assert RECORDS[0]["receipt"]["format"] == RECEIPT_FORMAT


# --- hex helpers


def test_hex0x_is_lower_case_with_prefix() -> None:
    assert hex0x(b"\xab\x01") == "0xab01"
    assert hex0x(b"") == "0x"


def test_unhex_reads_any_length_without_a_size() -> None:
    assert unhex("x", "0x", None) == b""
    assert unhex("x", "0xABcd", None) == b"\xab\xcd"
    with pytest.raises(FormatError, match=r"^x must be 0x-hex bytes, got 'abcd'$"):
        unhex("x", "abcd", None)


def test_unhex_shortens_long_garbage_in_messages() -> None:
    with pytest.raises(FormatError) as raised:
        unhex("x", "nope" * 100, 32)
    assert len(str(raised.value)) < 150
