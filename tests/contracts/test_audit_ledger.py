"""AuditLedger on an in-process chain, checked against the Python reference in ledger.merkle."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from eth_typing import ChecksumAddress
from web3 import EthereumTesterProvider, Web3
from web3.contract import Contract
from web3.types import TxReceipt

from crm_ledger.ledger import merkle
from tests.contracts.conftest import DEFAULT_ADMIN_ROLE, GAS_LIMIT, reverts_with

ANCHORER_ROLE = Web3.keccak(text="ANCHORER_ROLE")
# The product target: at most 100 gas per record at batches of 1,000 records.
ANCHOR_GAS_BUDGET = 100_000
# The first anchor also creates the head slot: a zero to non-zero SSTORE (20,000 gas) instead
# of a non-zero to non-zero one (2,900 gas).
FIRST_ANCHOR_EXTRA_GAS = 20_000 - 2_900
LARGEST_TREE = 33


def some_root(label: str) -> bytes:
    """A tree hash of one made-up leaf."""
    return merkle.root([merkle.leaf_hash(label.encode())])


def anchor(
    ledger: Contract, *, sender: ChecksumAddress, first_seq: int, count: int, root: bytes
) -> TxReceipt:
    """Anchor one batch and return the receipt of the successful transaction."""
    tx_hash = ledger.functions.anchor(first_seq, count, root).transact(
        {"from": sender, "gas": GAS_LIMIT}
    )
    receipt = ledger.w3.eth.wait_for_transaction_receipt(tx_hash)
    assert receipt["status"] == 1, f"anchor({first_seq}, {count}, {root.hex()}) reverted"
    return receipt


@dataclass(frozen=True)
class AnchoredTree:
    """One batch of the `anchored_trees` ledger, and a batch of the same size with another root."""

    batch_id: int
    leaves: list[bytes]
    twin_batch_id: int


@dataclass(frozen=True)
class AnchoredTrees:
    """A ledger holding a batch, and a twin batch, of every size 1..LARGEST_TREE."""

    ledger: Contract
    trees: dict[int, AnchoredTree]


@pytest.fixture(scope="module")
def anchored_trees(deploy_ledger: Callable[..., Contract]) -> AnchoredTrees:
    """Trees of sizes 1..LARGEST_TREE, anchored once per module (66 transactions)."""
    w3 = Web3(EthereumTesterProvider())
    admin, anchorer = w3.eth.accounts[:2]
    # Without a default sender, every eth_call first asks the node for its accounts.
    w3.eth.default_account = admin
    ledger = deploy_ledger(w3, admin=admin, anchorer=anchorer)
    batches: list[list[bytes]] = []
    for tree in ("main", "twin"):
        for size in range(1, LARGEST_TREE + 1):
            leaves = [merkle.leaf_hash(f"{tree} {size}/{i}".encode()) for i in range(size)]
            first_seq = sum(len(batch) for batch in batches)
            anchor(
                ledger, sender=anchorer, first_seq=first_seq, count=size, root=merkle.root(leaves)
            )
            batches.append(leaves)
    trees = {
        size: AnchoredTree(
            batch_id=size - 1, leaves=batches[size - 1], twin_batch_id=LARGEST_TREE + size - 1
        )
        for size in range(1, LARGEST_TREE + 1)
    }
    return AnchoredTrees(ledger=ledger, trees=trees)


def test_constructor_sets_roles_epoch_and_previous_ledger(
    w3: Web3,
    deploy_ledger: Callable[..., Contract],
    admin: ChecksumAddress,
    anchorer: ChecksumAddress,
) -> None:
    previous = deploy_ledger(w3, admin=admin, anchorer=anchorer)
    ledger = deploy_ledger(
        w3, admin=admin, anchorer=anchorer, epoch=2, previous_ledger=previous.address
    )

    assert ledger.functions.epoch().call() == 2
    assert ledger.functions.previousLedger().call() == previous.address
    assert previous.functions.epoch().call() == 1
    assert ledger.functions.ANCHORER_ROLE().call() == ANCHORER_ROLE
    assert ledger.functions.hasRole(DEFAULT_ADMIN_ROLE, admin).call()
    assert ledger.functions.hasRole(ANCHORER_ROLE, anchorer).call()
    assert not ledger.functions.hasRole(ANCHORER_ROLE, admin).call()
    assert not ledger.functions.hasRole(DEFAULT_ADMIN_ROLE, anchorer).call()
    assert ledger.functions.deploymentBlock().call() == w3.eth.block_number


def test_new_ledger_is_empty(ledger: Contract) -> None:
    assert ledger.functions.nextSeq().call() == 0
    assert ledger.functions.batchCount().call() == 0
    assert ledger.functions.head().call() == merkle.ZERO_HASH


@pytest.mark.parametrize("who", ["admin", "outsider"])
def test_only_anchorers_anchor(ledger: Contract, request: pytest.FixtureRequest, who: str) -> None:
    sender = request.getfixturevalue(who)
    with reverts_with(ledger, "AccessControlUnauthorizedAccount", sender, ANCHORER_ROLE):
        ledger.functions.anchor(0, 1, some_root("a")).transact({"from": sender})


def test_admin_grants_anchorer_role(
    ledger: Contract, admin: ChecksumAddress, outsider: ChecksumAddress
) -> None:
    ledger.functions.grantRole(ANCHORER_ROLE, outsider).transact({"from": admin})

    anchor(ledger, sender=outsider, first_seq=0, count=1, root=some_root("a"))
    assert ledger.functions.nextSeq().call() == 1


def test_only_the_admin_grants_roles(ledger: Contract, anchorer: ChecksumAddress) -> None:
    with reverts_with(ledger, "AccessControlUnauthorizedAccount", anchorer, DEFAULT_ADMIN_ROLE):
        ledger.functions.grantRole(ANCHORER_ROLE, anchorer).transact({"from": anchorer})


def test_batches_must_start_at_next_seq(ledger: Contract, anchorer: ChecksumAddress) -> None:
    root = some_root("a")
    with reverts_with(ledger, "AuditLedgerOutOfOrder", 0, 1):
        ledger.functions.anchor(1, 1, root).transact({"from": anchorer})

    anchor(ledger, sender=anchorer, first_seq=0, count=10, root=root)

    for given in (0, 9, 11, 2**64 - 1):
        with reverts_with(ledger, "AuditLedgerOutOfOrder", 10, given):
            ledger.functions.anchor(given, 1, root).transact({"from": anchorer})
    assert ledger.functions.nextSeq().call() == 10
    assert ledger.functions.batchCount().call() == 1


def test_empty_batch_is_rejected(ledger: Contract, anchorer: ChecksumAddress) -> None:
    with reverts_with(ledger, "AuditLedgerEmptyBatch"):
        ledger.functions.anchor(0, 0, some_root("a")).transact({"from": anchorer})
    assert ledger.functions.batchCount().call() == 0


def test_zero_root_is_rejected(ledger: Contract, anchorer: ChecksumAddress) -> None:
    with reverts_with(ledger, "AuditLedgerZeroRoot"):
        ledger.functions.anchor(0, 1, merkle.ZERO_HASH).transact({"from": anchorer})
    assert ledger.functions.batchCount().call() == 0


def test_head_chains_like_the_python_reference(ledger: Contract, anchorer: ChecksumAddress) -> None:
    # The largest count and a first seq above 2**32 check the uint32 / uint64 big-endian packing.
    counts = [1, 1000, 2**32 - 1, 7, 2**32 - 1, 1]
    head = merkle.ZERO_HASH
    first_seq = 0
    for batch_id, count in enumerate(counts):
        root = some_root(f"batch {batch_id}")
        assert ledger.functions.anchor(first_seq, count, root).call({"from": anchorer}) == batch_id
        receipt = anchor(ledger, sender=anchorer, first_seq=first_seq, count=count, root=root)

        head = merkle.next_head(head, root, first_seq, count)
        assert ledger.functions.head().call() == head
        (event,) = ledger.events.BatchAnchored().process_receipt(receipt)
        assert event["args"] == {
            "batchId": batch_id,
            "firstSeq": first_seq,
            "count": count,
            "root": root,
            "head": head,
        }
        assert receipt["logs"][0]["topics"][1] == batch_id.to_bytes(32, "big")
        first_seq += count
        assert ledger.functions.nextSeq().call() == first_seq
        assert ledger.functions.batchCount().call() == batch_id + 1
    assert first_seq > 2**33


def test_batch_returns_what_was_anchored(ledger: Contract, anchorer: ChecksumAddress) -> None:
    with reverts_with(ledger, "AuditLedgerUnknownBatch", 0):
        ledger.functions.batch(0).call()
    receipts = [
        anchor(ledger, sender=anchorer, first_seq=0, count=3, root=some_root("a")),
        anchor(ledger, sender=anchorer, first_seq=3, count=5, root=some_root("b")),
    ]

    assert ledger.functions.batch(0).call() == [0, 3, some_root("a")]
    assert ledger.functions.batch(1).call() == [3, 5, some_root("b")]
    for batch_id, receipt in enumerate(receipts):
        assert ledger.functions.batchBlockNumber(batch_id).call() == receipt["blockNumber"]
    for unknown in (2, 2**256 - 1):
        with reverts_with(ledger, "AuditLedgerUnknownBatch", unknown):
            ledger.functions.batch(unknown).call()
        with reverts_with(ledger, "AuditLedgerUnknownBatch", unknown):
            ledger.functions.batchBlockNumber(unknown).call()
        with reverts_with(ledger, "AuditLedgerUnknownBatch", unknown):
            ledger.functions.verifyInclusion(unknown, 0, some_root("a"), []).call()


def test_anchor_gas_per_record(ledger: Contract, anchorer: ChecksumAddress) -> None:
    batch_size = 1000
    gas_used = [
        anchor(
            ledger,
            sender=anchorer,
            first_seq=i * batch_size,
            count=batch_size,
            root=some_root(f"{i}"),
        )["gasUsed"]
        for i in range(3)
    ]
    first, second, third = gas_used

    assert second == third
    assert second <= ANCHOR_GAS_BUDGET, f"{second / batch_size:.0f} gas per record"
    assert first <= second + FIRST_ANCHOR_EXTRA_GAS, gas_used


@pytest.mark.parametrize("size", range(1, LARGEST_TREE + 1))
def test_verify_inclusion_accepts_every_leaf(anchored_trees: AnchoredTrees, size: int) -> None:
    tree = anchored_trees.trees[size]
    verify = anchored_trees.ledger.functions.verifyInclusion
    for index, leaf in enumerate(tree.leaves):
        proof = merkle.inclusion_proof(tree.leaves, index)
        assert verify(tree.batch_id, index, leaf, proof).call(), f"leaf {index} of {size}"


def tampered_proofs(
    tree_leaves: list[bytes], index: int
) -> Iterator[tuple[str, int, bytes, list[bytes]]]:
    """(description, index, leaf hash, proof) for proofs of leaf `index` that must not verify."""
    size = len(tree_leaves)
    leaf = tree_leaves[index]
    proof = merkle.inclusion_proof(tree_leaves, index)
    other = merkle.leaf_hash(b"not in the tree")

    yield "changed leaf", index, other, proof
    if size > 1:
        yield "changed index", index ^ 1 if index ^ 1 < size else index - 1, leaf, proof
    yield "index = tree size", size, leaf, proof
    for position in sorted({0, len(proof) - 1}) if proof else []:
        changed = list(proof)
        changed[position] = other
        yield f"changed path element {position}", index, leaf, changed
    if proof:
        yield "removed path element", index, leaf, proof[:-1]
    yield "extra path element", index, leaf, [*proof, other]


@pytest.mark.parametrize("size", range(1, LARGEST_TREE + 1))
def test_verify_inclusion_rejects_tampered_proofs(anchored_trees: AnchoredTrees, size: int) -> None:
    tree = anchored_trees.trees[size]
    verify = anchored_trees.ledger.functions.verifyInclusion
    expected_root = merkle.root(tree.leaves)
    # The first leaf's path goes left all the way; the last one's meets the carried-up nodes of
    # an unbalanced tree. Every leaf of every size would multiply the run time for little gain.
    for index in sorted({0, size - 1}):
        for description, claimed_index, leaf, proof in tampered_proofs(tree.leaves, index):
            case = f"leaf {index} of {size}, {description}"
            assert not merkle.verify_inclusion(
                index=claimed_index,
                tree_size=size,
                leaf=leaf,
                proof=proof,
                expected_root=expected_root,
            ), f"Python reference accepts {case}"
            assert not verify(tree.batch_id, claimed_index, leaf, proof).call(), case

        proof = merkle.inclusion_proof(tree.leaves, index)
        assert not verify(tree.twin_batch_id, index, tree.leaves[index], proof).call(), (
            f"leaf {index} of {size} against another root"
        )


def test_verify_inclusion_rejects_an_index_far_out_of_range(anchored_trees: AnchoredTrees) -> None:
    tree = anchored_trees.trees[LARGEST_TREE]
    proof = merkle.inclusion_proof(tree.leaves, 0)
    verify = anchored_trees.ledger.functions.verifyInclusion
    assert not verify(tree.batch_id, 2**256 - 1, tree.leaves[0], proof).call()
    assert not verify(tree.batch_id, 2**64, tree.leaves[0], proof).call()
