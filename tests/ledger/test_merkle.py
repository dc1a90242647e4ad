"""RFC 6962 / RFC 9162 Merkle trees: published vectors, a second implementation, pymerkle.

Three independent checks of `crm_ledger.ledger.merkle`:
- the published transparency-dev/merkle reference data (tests/vectors/merkle_roots.json,
  inclusion.json);
- a deliberately different implementation below, written straight from the recursive
  definitions of MTH (RFC 6962 §2.1) and PATH (RFC 9162 §2.1.3.1), where `merkle.py` works
  bottom-up and verifies with the iterative algorithm of RFC 9162 §2.1.3.2;
- pymerkle, a maintained RFC 9162 library from PyPI.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from pymerkle import (  # type: ignore[import-untyped]
    InclusionProof,
    InmemoryTree,
    verify_inclusion,
)
from pymerkle import InvalidProof as PymerkleInvalidProof

from crm_ledger.errors import InvalidProof
from crm_ledger.ledger import merkle

VECTORS = Path(__file__).parents[1] / "vectors"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    return data


ROOTS = load("merkle_roots.json")
INCLUSION = load("inclusion.json")
HEADS = load("head.json")


# --- the second implementation: RFC 6962 §2.1 and RFC 9162 §2.1.3.1, recursive, by the letter


def ref_leaf(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def ref_node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def ref_split(n: int) -> int:
    """k: the largest power of two smaller than n."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(hashed_leaves: Sequence[bytes]) -> bytes:
    """MTH(D[n]) over leaves that are already hashed."""
    n = len(hashed_leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashed_leaves[0]
    k = ref_split(n)
    return ref_node(ref_mth(hashed_leaves[:k]), ref_mth(hashed_leaves[k:]))


def ref_path(m: int, hashed_leaves: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]): RFC 9162 §2.1.3.1."""
    n = len(hashed_leaves)
    if n == 1:
        return []
    k = ref_split(n)
    if m < k:
        return [*ref_path(m, hashed_leaves[:k]), ref_mth(hashed_leaves[k:])]
    return [*ref_path(m - k, hashed_leaves[k:]), ref_mth(hashed_leaves[:k])]


def ref_root_from_path(m: int, n: int, leaf: bytes, path: Sequence[bytes]) -> bytes | None:
    """Undo PATH(m, D[n]) step by step; None when the path cannot have that shape."""
    if not 0 <= m < n or len(leaf) != 32 or any(len(p) != 32 for p in path):
        return None
    if n == 1:
        return leaf if not path else None
    if not path:
        return None
    k = ref_split(n)
    if m < k:
        left = ref_root_from_path(m, k, leaf, path[:-1])
        return None if left is None else ref_node(left, path[-1])
    right = ref_root_from_path(m - k, n - k, leaf, path[:-1])
    return None if right is None else ref_node(path[-1], right)


def ref_verify(m: int, n: int, leaf: bytes, path: Sequence[bytes], root: bytes) -> bool:
    return ref_root_from_path(m, n, leaf, path) == root


def ref_head(previous: bytes, root: bytes, first_seq: int, count: int) -> bytes:
    return hashlib.sha256(previous + root + struct.pack(">QI", first_seq, count)).digest()


def leaves_for(n: int) -> list[bytes]:
    """n distinct leaf inputs of varying length."""
    return [i.to_bytes(4, "big") * (i % 3 + 1) for i in range(n)]


def unhex_all(values: Sequence[str]) -> list[bytes]:
    return [bytes.fromhex(v) for v in values]


def test_reference_split_matches_the_published_examples() -> None:
    # The examples of downToPowerOfTwo in transparency-dev/merkle testonly/reference_test.go.
    for n, k in [(2, 1), (7, 4), (8, 4), (63, 32), (28937, 16384)]:
        assert ref_split(n) == k


# --- published reference data


@pytest.mark.parametrize("case", ROOTS["leaf_hashes"], ids=lambda c: c["desc"])
def test_leaf_hash_matches_published(case: dict[str, Any]) -> None:
    leaf = bytes.fromhex(case["leaf"])
    assert merkle.leaf_hash(leaf).hex() == case["hash"]
    assert ref_leaf(leaf).hex() == case["hash"]


@pytest.mark.parametrize("case", ROOTS["roots"], ids=lambda c: c["desc"])
def test_root_matches_published(case: dict[str, Any]) -> None:
    hashed = [merkle.leaf_hash(leaf) for leaf in unhex_all(ROOTS["leaves"][: case["size"]])]
    assert merkle.root(hashed).hex() == case["root"]
    assert ref_mth(hashed).hex() == case["root"]


def test_published_roots_cover_every_size_up_to_eight() -> None:
    assert [case["size"] for case in ROOTS["roots"]] == list(range(9))
    assert len(ROOTS["leaves"]) == 8
    assert "transparency-dev/merkle" in ROOTS["source"]


@pytest.mark.parametrize("case", INCLUSION["cases"], ids=lambda c: c["desc"])
def test_inclusion_vector(case: dict[str, Any]) -> None:
    leaf = bytes.fromhex(case["leaf_hash"])
    proof = unhex_all(case["proof"])
    root = bytes.fromhex(case["root"])
    index, size = case["leaf_index"], case["tree_size"]
    verified = merkle.verify_inclusion(
        index=index, tree_size=size, leaf=leaf, proof=proof, expected_root=root
    )
    assert verified is case["valid"]
    assert ref_verify(index, size, leaf, proof, root) is case["valid"]
    if case["valid"]:
        assert merkle.root_from_inclusion_proof(
            index=index, tree_size=size, leaf=leaf, proof=proof
        ) == (root)


@pytest.mark.parametrize(
    "case",
    [c for c in INCLUSION["cases"] if c["desc"].startswith("published proof")],
    ids=lambda c: c["desc"],
)
def test_generated_proof_equals_published(case: dict[str, Any]) -> None:
    hashed = [merkle.leaf_hash(leaf) for leaf in unhex_all(ROOTS["leaves"][: case["tree_size"]])]
    assert [p.hex() for p in merkle.inclusion_proof(hashed, case["leaf_index"])] == case["proof"]


def test_inclusion_vectors_hold_happy_and_each_kind_of_bad_case() -> None:
    descs = [c["desc"] for c in INCLUSION["cases"]]
    assert sum(c["valid"] for c in INCLUSION["cases"]) >= 7
    for kind in [
        "wrong root",
        "truncated path",
        "extra element",
        "wrong index",
        "wrong tree size",
        "flipped bit",
    ]:
        assert any(d.startswith(kind) for d in descs), kind


# --- every tree from 1 to 64 leaves, against the second implementation


@pytest.mark.parametrize("size", range(1, 65))
def test_every_leaf_of_every_tree_up_to_64_verifies(size: int) -> None:
    hashed = [ref_leaf(leaf) for leaf in leaves_for(size)]
    tree_root = merkle.root(hashed)
    assert tree_root == ref_mth(hashed)
    tree = merkle.levels(hashed)
    assert tree[-1] == [tree_root]
    for index in range(size):
        proof = merkle.inclusion_proof(hashed, index)
        assert proof == ref_path(index, hashed)
        assert merkle.inclusion_proof_from_levels(tree, index) == proof
        assert merkle.verify_inclusion(
            index=index, tree_size=size, leaf=hashed[index], proof=proof, expected_root=tree_root
        )
        assert ref_verify(index, size, hashed[index], proof, tree_root)
        # The same proof must not place the leaf anywhere else.
        for other in range(size):
            if other != index:
                assert not merkle.verify_inclusion(
                    index=other,
                    tree_size=size,
                    leaf=hashed[index],
                    proof=proof,
                    expected_root=tree_root,
                )


def _bit_flips(value: bytes) -> list[bytes]:
    flips = []
    for position in range(len(value) * 8):
        flipped = bytearray(value)
        flipped[position // 8] ^= 0x80 >> (position % 8)
        flips.append(bytes(flipped))
    return flips


# Every leaf of the trees up to 16 leaves; the first, a middle and the last leaf of the larger
# ones. Every leaf of every tree to 64 takes 20 s; the test above already shows each of those
# proofs verifies and places its leaf nowhere else.
BIT_FLIP_TREES = [(size, index) for size in range(1, 17) for index in range(size)] + [
    (size, index) for size in range(17, 65) for index in sorted({0, size // 2, size - 1})
]


@pytest.mark.parametrize(("size", "index"), BIT_FLIP_TREES)
def test_every_single_bit_flip_fails(size: int, index: int) -> None:
    hashed = [ref_leaf(leaf) for leaf in leaves_for(size)]
    tree_root = ref_mth(hashed)
    proof = merkle.inclusion_proof(hashed, index)

    def verifies(leaf: bytes, path: list[bytes], expected_root: bytes) -> bool:
        return merkle.verify_inclusion(
            index=index, tree_size=size, leaf=leaf, proof=path, expected_root=expected_root
        )

    assert verifies(hashed[index], proof, tree_root)
    for position, element in enumerate(proof):
        for flipped in _bit_flips(element):
            tampered = [*proof[:position], flipped, *proof[position + 1 :]]
            assert not verifies(hashed[index], tampered, tree_root)
    for flipped in _bit_flips(hashed[index]):
        assert not verifies(flipped, proof, tree_root)
    for flipped in _bit_flips(tree_root):
        assert not verifies(hashed[index], proof, flipped)


# --- pymerkle, an independent RFC 9162 implementation


@pytest.mark.parametrize("size", range(1, 65))
def test_pymerkle_builds_the_same_tree_and_accepts_our_proofs(size: int) -> None:
    leaves = leaves_for(size)
    hashed = [merkle.leaf_hash(leaf) for leaf in leaves]
    tree_root = merkle.root(hashed)
    theirs = InmemoryTree.init_from_entries(leaves, algorithm="sha256")
    assert theirs.get_root() == tree_root
    for index in range(size):
        ours = merkle.inclusion_proof(hashed, index)
        # pymerkle counts leaves from 1 and starts its path with the leaf hash itself.
        their_proof = theirs.prove_inclusion(index + 1, size)
        assert their_proof.path == [hashed[index], *ours]
        ours_for_pymerkle = InclusionProof(
            "sha256", True, size, index + 1, their_proof.rule, [hashed[index], *ours]
        )
        verify_inclusion(hashed[index], tree_root, ours_for_pymerkle, index=index + 1, size=size)


@pytest.mark.parametrize(("size", "index"), [(5, 1), (8, 5), (13, 12), (64, 37)])
def test_pymerkle_rejects_our_proofs_with_a_flipped_bit(size: int, index: int) -> None:
    leaves = leaves_for(size)
    hashed = [merkle.leaf_hash(leaf) for leaf in leaves]
    tree_root = merkle.root(hashed)
    rule = InmemoryTree.init_from_entries(leaves).prove_inclusion(index + 1, size).rule
    proof = merkle.inclusion_proof(hashed, index)
    for position, element in enumerate(proof):
        for flipped in _bit_flips(element):
            tampered = [*proof[:position], flipped, *proof[position + 1 :]]
            with pytest.raises(PymerkleInvalidProof):
                verify_inclusion(
                    hashed[index],
                    tree_root,
                    InclusionProof(
                        "sha256", True, size, index + 1, rule, [hashed[index], *tampered]
                    ),
                )


@pytest.mark.parametrize(
    "case",
    [c for c in INCLUSION["cases"] if c["desc"].startswith("published proof")],
    ids=lambda c: c["desc"],
)
def test_pymerkle_agrees_with_the_published_vectors(case: dict[str, Any]) -> None:
    leaves = unhex_all(ROOTS["leaves"][: case["tree_size"]])
    theirs = InmemoryTree.init_from_entries(leaves)
    assert theirs.get_root().hex() == case["root"]
    proof = theirs.prove_inclusion(case["leaf_index"] + 1)
    assert [p.hex() for p in proof.path] == [case["leaf_hash"], *case["proof"]]


# --- edges and errors


def test_empty_tree_root_is_the_hash_of_nothing() -> None:
    assert merkle.root([]) == hashlib.sha256(b"").digest()


def test_levels_needs_a_leaf() -> None:
    with pytest.raises(ValueError, match="at least one leaf"):
        merkle.levels([])


@pytest.mark.parametrize("index", [-1, 3])
def test_inclusion_proof_refuses_an_index_outside_the_tree(index: int) -> None:
    hashed = [ref_leaf(leaf) for leaf in leaves_for(3)]
    with pytest.raises(IndexError, match="outside a tree of 3 leaves"):
        merkle.inclusion_proof(hashed, index)


@pytest.mark.parametrize(
    ("index", "tree_size", "leaf", "proof", "message"),
    [
        (0, 0, bytes(32), [], "outside a tree of 0 leaves"),
        (2, 2, bytes(32), [bytes(32)], "outside a tree of 2 leaves"),
        (-1, 2, bytes(32), [bytes(32)], "outside a tree of 2 leaves"),
        (0, 2, bytes(31), [bytes(32)], "must be 32 bytes"),
        (0, 2, bytes(32), [bytes(33)], "must be 32 bytes"),
        (0, 2, bytes(32), [bytes(32), bytes(32)], "longer than the tree is deep"),
        (0, 4, bytes(32), [bytes(32)], "shorter than the tree is deep"),
        (0, 1, bytes(32), [bytes(32)], "longer than the tree is deep"),
    ],
)
def test_root_from_inclusion_proof_says_what_is_wrong(
    index: int, tree_size: int, leaf: bytes, proof: list[bytes], message: str
) -> None:
    with pytest.raises(InvalidProof, match=message):
        merkle.root_from_inclusion_proof(index=index, tree_size=tree_size, leaf=leaf, proof=proof)
    assert not merkle.verify_inclusion(
        index=index, tree_size=tree_size, leaf=leaf, proof=proof, expected_root=bytes(32)
    )


def test_node_hash_is_domain_separated_from_leaf_hash() -> None:
    left, right = bytes(range(32)), bytes(range(32, 64))
    assert merkle.node_hash(left, right) == hashlib.sha256(b"\x01" + left + right).digest()
    assert merkle.node_hash(left, right) != merkle.leaf_hash(left + right)


# --- running head


@pytest.mark.parametrize("case", HEADS["chain"], ids=lambda c: c["desc"])
def test_head_chain_vector(case: dict[str, Any]) -> None:
    previous, root = bytes.fromhex(case["previous_head"]), bytes.fromhex(case["root"])
    head = merkle.next_head(previous, root, case["first_seq"], case["count"])
    assert head.hex() == case["head"]
    assert ref_head(previous, root, case["first_seq"], case["count"]).hex() == case["head"]


def test_head_chain_links_batches_from_zero() -> None:
    assert bytes.fromhex(HEADS["start"]) == merkle.ZERO_HASH == bytes(32)
    head = merkle.ZERO_HASH
    next_seq = 0
    for case in HEADS["chain"]:
        assert case["previous_head"] == head.hex()
        assert case["first_seq"] == next_seq
        head = merkle.next_head(head, bytes.fromhex(case["root"]), case["first_seq"], case["count"])
        next_seq += case["count"]
    assert head.hex() == HEADS["chain"][-1]["head"]


@pytest.mark.parametrize("case", HEADS["cases"], ids=lambda c: c["desc"])
def test_head_field_widths(case: dict[str, Any]) -> None:
    previous, root = bytes.fromhex(case["previous_head"]), bytes.fromhex(case["root"])
    expected = hashlib.sha256(
        previous + root + case["first_seq"].to_bytes(8, "big") + case["count"].to_bytes(4, "big")
    ).hexdigest()
    assert expected == case["head"]
    assert merkle.next_head(previous, root, case["first_seq"], case["count"]).hex() == expected


def test_head_depends_on_every_input() -> None:
    root = bytes.fromhex(HEADS["chain"][0]["root"])
    base = merkle.next_head(merkle.ZERO_HASH, root, 0, 3)
    assert merkle.next_head(b"\x01" + bytes(31), root, 0, 3) != base
    assert merkle.next_head(merkle.ZERO_HASH, bytes(32), 0, 3) != base
    assert merkle.next_head(merkle.ZERO_HASH, root, 1, 3) != base
    assert merkle.next_head(merkle.ZERO_HASH, root, 0, 4) != base
