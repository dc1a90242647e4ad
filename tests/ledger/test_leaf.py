"""Leaf input format version 1, driven by tests/vectors/leaf_input.json.

Every encoding in the vectors is re-derived here with `struct` and every leaf hash with
`hashlib`, so the vectors do not merely echo `leaf.py`.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from pathlib import Path
from typing import Any

import pytest

from crm_ledger.errors import FormatError
from crm_ledger.ledger.leaf import FORMAT_VERSION, LEAF_INPUT_SIZE, LeafInput, RecordKind

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "vectors" / "leaf_input.json").read_text(encoding="utf-8")
)

# version u8 | seq u64 | kind u8 | commitment 32 | previous leaf hash 32, big-endian
LAYOUT = struct.Struct(">BQB32s32s")


def fields_of(case: dict[str, Any]) -> LeafInput:
    return LeafInput(
        version=case["version"],
        seq=case["seq"],
        kind=case["kind"],
        commitment=bytes.fromhex(case["commitment"]),
        previous_leaf_hash=bytes.fromhex(case["previous_leaf_hash"]),
    )


def test_layout_constants() -> None:
    assert LAYOUT.size == LEAF_INPUT_SIZE == 74
    assert FORMAT_VERSION == 1
    # The kind bytes are part of the format: they may never be renumbered.
    assert {kind.name: kind.value for kind in RecordKind} == {
        "INTERACTION": 1,
        "ORDER": 2,
        "ERASURE": 3,
        "ACCESS": 4,
    }


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["desc"])
def test_encode_matches_vector(case: dict[str, Any]) -> None:
    encoded = bytes.fromhex(case["encoded"])
    by_hand = LAYOUT.pack(
        case["version"],
        case["seq"],
        case["kind"],
        bytes.fromhex(case["commitment"]),
        bytes.fromhex(case["previous_leaf_hash"]),
    )
    assert by_hand == encoded
    assert fields_of(case).encode() == encoded


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["desc"])
def test_leaf_hash_matches_vector(case: dict[str, Any]) -> None:
    encoded = bytes.fromhex(case["encoded"])
    assert hashlib.sha256(b"\x00" + encoded).hexdigest() == case["leaf_hash"]
    assert fields_of(case).leaf_hash().hex() == case["leaf_hash"]


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["desc"])
def test_decode_round_trips(case: dict[str, Any]) -> None:
    decoded = LeafInput.decode(bytes.fromhex(case["encoded"]))
    assert decoded == fields_of(case)
    assert isinstance(decoded.kind, RecordKind)
    assert decoded.encode().hex() == case["encoded"]


@pytest.mark.parametrize("case", VECTORS["bad_encoded"], ids=lambda c: c["desc"])
def test_decode_refuses(case: dict[str, Any]) -> None:
    with pytest.raises(FormatError, match=re.escape(case["error"])):
        LeafInput.decode(bytes.fromhex(case["encoded"]))


@pytest.mark.parametrize("case", VECTORS["bad_fields"], ids=lambda c: c["desc"])
def test_encode_refuses(case: dict[str, Any]) -> None:
    with pytest.raises(FormatError, match=re.escape(case["error"])):
        fields_of(case).encode()


def test_vectors_cover_every_kind_and_the_seq_extremes() -> None:
    assert {case["kind"] for case in VECTORS["cases"]} == {1, 2, 3, 4}
    assert {0, 2**64 - 1} <= {case["seq"] for case in VECTORS["cases"]}


def test_every_field_lands_at_its_documented_offset() -> None:
    commitment, previous = bytes(range(32)), bytes(range(100, 132))
    encoded = LeafInput(
        seq=0x0102030405060708,
        kind=RecordKind.ERASURE,
        commitment=commitment,
        previous_leaf_hash=previous,
    ).encode()
    assert encoded[0] == 1
    assert encoded[1:9] == bytes([1, 2, 3, 4, 5, 6, 7, 8])
    assert encoded[9] == 3
    assert encoded[10:42] == commitment
    assert encoded[42:74] == previous


def test_a_customers_first_leaf_chains_to_zeros() -> None:
    leaf = LeafInput(seq=5, kind=RecordKind.INTERACTION, commitment=bytes(range(32)))
    assert leaf.previous_leaf_hash == bytes(32)
    assert leaf.encode()[42:] == bytes(32)
