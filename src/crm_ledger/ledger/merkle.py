"""RFC 6962 / RFC 9162 Merkle trees over bytes: pure functions, no I/O.

Exports: `leaf_hash`, `node_hash`, `root`, `inclusion_proof`, `root_from_inclusion_proof`,
`verify_inclusion`, `next_head`, `ZERO_HASH`.

One tree is built per anchored batch, leaves in seq order. Hashes follow RFC 6962 §2.1:
leaf = SHA-256(0x00 ‖ leaf input), node = SHA-256(0x01 ‖ left ‖ right), and a tree of n leaves
splits at the largest power of two smaller than n. Inclusion proofs are verified with the
algorithm of RFC 9162 §2.1.3.2, so any RFC 9162 library checks the same proofs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from crm_ledger.errors import InvalidProof

ZERO_HASH = bytes(32)
HASH_SIZE = 32


def leaf_hash(leaf_input: bytes) -> bytes:
    """Return SHA-256(0x00 ‖ leaf_input)."""
    return hashlib.sha256(b"\x00" + leaf_input).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return SHA-256(0x01 ‖ left ‖ right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly smaller than n (n ≥ 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """Merkle tree hash of already-hashed leaves; the empty tree hashes to SHA-256("")."""
    if not leaf_hashes:
        return hashlib.sha256(b"").digest()
    level = list(leaf_hashes)
    # Bottom-up pairing gives the same root as RFC 6962's recursive split: an odd node is
    # carried up unchanged, which is exactly where the recursive definition leaves it.
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def levels(leaf_hashes: Sequence[bytes]) -> list[list[bytes]]:
    """Every level of the tree, leaves first, root last (for proofs of many leaves)."""
    if not leaf_hashes:
        raise ValueError("a tree needs at least one leaf")
    out = [list(leaf_hashes)]
    while len(out[-1]) > 1:
        level = out[-1]
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        out.append(paired)
    return out


def inclusion_proof_from_levels(tree: list[list[bytes]], index: int) -> list[bytes]:
    """Audit path of leaf `index`, taken from `levels()` of the tree (RFC 6962 §2.1.1 order)."""
    size = len(tree[0])
    if not 0 <= index < size:
        raise IndexError(f"leaf index {index} is outside a tree of {size} leaves")
    path = []
    for level in tree[:-1]:
        sibling = index ^ 1
        if sibling < len(level):
            path.append(level[sibling])
        index //= 2
    return path


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """Audit path of leaf `index` in the tree of `leaf_hashes`."""
    return inclusion_proof_from_levels(levels(leaf_hashes), index)


def root_from_inclusion_proof(
    *, index: int, tree_size: int, leaf: bytes, proof: Sequence[bytes]
) -> bytes:
    """Recompute the root from a leaf hash and its audit path (RFC 9162 §2.1.3.2).

    Raises `InvalidProof` when the path cannot belong to a tree of that size.
    """
    if tree_size < 1 or not 0 <= index < tree_size:
        raise InvalidProof(f"leaf index {index} is outside a tree of {tree_size} leaves")
    if len(leaf) != HASH_SIZE or any(len(p) != HASH_SIZE for p in proof):
        raise InvalidProof("every hash in a proof must be 32 bytes")
    fn, sn = index, tree_size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            raise InvalidProof("audit path is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise InvalidProof("audit path is shorter than the tree is deep")
    return r


def verify_inclusion(
    *, index: int, tree_size: int, leaf: bytes, proof: Sequence[bytes], expected_root: bytes
) -> bool:
    """True when `proof` shows `leaf` at `index` in the tree of `tree_size` with `expected_root`."""
    try:
        return (
            root_from_inclusion_proof(index=index, tree_size=tree_size, leaf=leaf, proof=proof)
            == expected_root
        )
    except InvalidProof:
        return False


def next_head(previous_head: bytes, batch_root: bytes, first_seq: int, count: int) -> bytes:
    """Running ledger head: SHA-256(previous head ‖ root ‖ uint64 first seq ‖ uint32 count)."""
    return hashlib.sha256(
        previous_head + batch_root + first_seq.to_bytes(8, "big") + count.to_bytes(4, "big")
    ).digest()
