// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";

/// @title AuditLedger
/// @notice Append-only, tamper-evident anchor of the crm-ledger journal. Each batch of contiguous
/// sequence numbers is anchored as one Merkle root, and every root is chained into a running head
/// that commits to the whole history.
/// @dev Trees follow RFC 6962 §2.1: leaf = SHA-256(0x00 ‖ leaf input), node =
/// SHA-256(0x01 ‖ left ‖ right). The head is SHA-256(previous head ‖ root ‖ uint64 firstSeq ‖
/// uint32 count), starting from 32 zero bytes. Storage is laid out for gas, because anchoring
/// cost per record is a product figure: a batch keeps two slots, the cursor (next seq, batch
/// count, deployment block) one, the head one; each batch's head lives only in its
/// `BatchAnchored` event.
contract AuditLedger is AccessControl {
    /// @notice Role allowed to anchor batches.
    bytes32 public constant ANCHORER_ROLE = keccak256("ANCHORER_ROLE");

    /// @notice Ledger epoch: 1 for the first ledger, one more for each recovery after a chain
    /// reset.
    uint32 public immutable epoch;

    /// @notice The ledger this one replaces after a chain reset, or the zero address for epoch 1.
    address public immutable previousLedger;

    /// @dev One anchored batch; exactly two storage slots.
    struct Batch {
        uint64 firstSeq;
        uint32 count;
        uint64 blockNumber;
        bytes32 root;
    }

    /// @dev Read and written together by every anchor, so they share one slot. The deployment
    /// block, set by the constructor, also makes the slot non-zero before the first anchor,
    /// which then pays 2,900 gas to update it rather than 20,000 to create it.
    struct Cursor {
        uint64 nextSeq;
        uint64 batchCount;
        uint64 deploymentBlock;
    }

    Cursor private _cursor;
    bytes32 private _head;
    mapping(uint256 batchId => Batch) private _batches;

    /// @notice Batch `batchId` of `count` records starting at `firstSeq`, with Merkle root `root`,
    /// was anchored; `head` is the ledger head after it.
    /// @param batchId Index of the batch, counted from 0.
    /// @param firstSeq Sequence number of the batch's first record.
    /// @param count Number of records (leaves) in the batch.
    /// @param root RFC 6962 Merkle tree hash of the batch's leaves.
    /// @param head Running ledger head after this batch.
    event BatchAnchored(
        uint256 indexed batchId, uint64 firstSeq, uint32 count, bytes32 root, bytes32 head
    );

    /// @notice The batch does not start at the next sequence number still to be anchored.
    /// @param expected The sequence number the next batch must start at.
    /// @param given The first sequence number of the rejected batch.
    error AuditLedgerOutOfOrder(uint64 expected, uint64 given);

    /// @notice A batch must hold at least one record.
    error AuditLedgerEmptyBatch();

    /// @notice A batch root of 32 zero bytes is not a tree hash (and would hide a missing value).
    error AuditLedgerZeroRoot();

    /// @notice No batch with this id has been anchored.
    /// @param batchId The requested batch id.
    error AuditLedgerUnknownBatch(uint256 batchId);

    /// @notice Creates an empty ledger.
    /// @param admin Account granted DEFAULT_ADMIN_ROLE (manages roles).
    /// @param anchorer Account granted ANCHORER_ROLE.
    /// @param epoch_ Ledger epoch, one more than the ledger this one replaces.
    /// @param previousLedger_ The ledger this one replaces, or the zero address.
    constructor(address admin, address anchorer, uint32 epoch_, address previousLedger_) {
        epoch = epoch_;
        previousLedger = previousLedger_;
        _cursor.deploymentBlock = uint64(block.number);
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(ANCHORER_ROLE, anchorer);
    }

    /// @notice Anchors the Merkle root of the records `firstSeq` .. `firstSeq + count - 1`.
    /// @dev Reverts with AuditLedgerOutOfOrder unless `firstSeq` is `nextSeq()`, with
    /// AuditLedgerEmptyBatch when `count` is 0 and with AuditLedgerZeroRoot when `root` is zero.
    /// @param firstSeq Sequence number of the batch's first record; must equal `nextSeq()`.
    /// @param count Number of records in the batch.
    /// @param root RFC 6962 Merkle tree hash of the batch's leaf hashes, in seq order.
    /// @return batchId Id of the new batch: the number of batches anchored before it.
    function anchor(uint64 firstSeq, uint32 count, bytes32 root)
        external
        onlyRole(ANCHORER_ROLE)
        returns (uint256 batchId)
    {
        return _anchor(firstSeq, count, root);
    }

    /// @notice The sequence number the next batch must start at.
    /// @return The first sequence number not yet anchored.
    function nextSeq() external view returns (uint64) {
        return _cursor.nextSeq;
    }

    /// @notice The running ledger head after the latest batch (32 zero bytes before the first).
    /// @return The current head.
    function head() external view returns (bytes32) {
        return _head;
    }

    /// @notice How many batches have been anchored.
    /// @return The number of batches; batch ids run from 0 to this minus one.
    function batchCount() external view returns (uint256) {
        return _cursor.batchCount;
    }

    /// @notice The block in which this ledger was deployed: where reading its events can start.
    /// @return The deployment block number.
    function deploymentBlock() external view returns (uint64) {
        return _cursor.deploymentBlock;
    }

    /// @notice An anchored batch. Reverts with AuditLedgerUnknownBatch for an unknown id.
    /// @param batchId Id of the batch.
    /// @return firstSeq Sequence number of the batch's first record.
    /// @return count Number of records in the batch.
    /// @return root Merkle tree hash of the batch.
    function batch(uint256 batchId)
        external
        view
        returns (uint64 firstSeq, uint32 count, bytes32 root)
    {
        Batch storage anchored = _batchAt(batchId);
        return (anchored.firstSeq, anchored.count, anchored.root);
    }

    /// @notice The block in which a batch was anchored, to find its `BatchAnchored` event.
    /// Reverts with AuditLedgerUnknownBatch for an unknown id.
    /// @param batchId Id of the batch.
    /// @return The block number of the anchoring transaction.
    function batchBlockNumber(uint256 batchId) external view returns (uint64) {
        return _batchAt(batchId).blockNumber;
    }

    /// @notice Checks an RFC 9162 §2.1.3.2 inclusion proof against an anchored batch's root.
    /// @dev Returns false, never reverts, for an index outside the batch, a path of the wrong
    /// length or a root mismatch; reverts with AuditLedgerUnknownBatch only for an unknown batch.
    /// @param batchId Id of the batch the leaf claims to be in.
    /// @param index Position of the leaf in the batch (0 is the record with seq `firstSeq`).
    /// @param leafHash SHA-256(0x00 ‖ leaf input).
    /// @param proof Audit path, from the leaf's sibling up to the root's child.
    /// @return True when the proof shows `leafHash` at `index` in the batch.
    function verifyInclusion(
        uint256 batchId,
        uint256 index,
        bytes32 leafHash,
        bytes32[] calldata proof
    )
        external
        view
        returns (bool)
    {
        Batch storage anchored = _batchAt(batchId);
        return _verifyInclusion(index, anchored.count, leafHash, proof, anchored.root);
    }

    function _anchor(uint64 firstSeq, uint32 count, bytes32 root)
        internal
        returns (uint256 batchId)
    {
        Cursor memory cursor = _cursor;
        if (firstSeq != cursor.nextSeq) revert AuditLedgerOutOfOrder(cursor.nextSeq, firstSeq);
        if (count == 0) revert AuditLedgerEmptyBatch();
        if (root == bytes32(0)) revert AuditLedgerZeroRoot();

        batchId = cursor.batchCount;
        bytes32 newHead = sha256(abi.encodePacked(_head, root, firstSeq, count));
        _batches[batchId] = Batch({
            firstSeq: firstSeq,
            count: count,
            blockNumber: uint64(block.number),
            root: root
        });
        _cursor = Cursor({
            nextSeq: firstSeq + count,
            batchCount: cursor.batchCount + 1,
            deploymentBlock: cursor.deploymentBlock
        });
        _head = newHead;
        emit BatchAnchored(batchId, firstSeq, count, root, newHead);
    }

    function _batchAt(uint256 batchId) internal view returns (Batch storage) {
        if (batchId >= _cursor.batchCount) revert AuditLedgerUnknownBatch(batchId);
        return _batches[batchId];
    }

    /// @dev RFC 9162 §2.1.3.2, step by step; `fn` and `sn` are the spec's names.
    function _verifyInclusion(
        uint256 index,
        uint256 treeSize,
        bytes32 leafHash,
        bytes32[] calldata proof,
        bytes32 root
    ) internal pure returns (bool) {
        if (index >= treeSize) return false;
        uint256 fn = index;
        uint256 sn = treeSize - 1;
        bytes32 r = leafHash;
        for (uint256 i = 0; i < proof.length; ++i) {
            if (sn == 0) return false;
            if (fn & 1 == 1 || fn == sn) {
                r = _nodeHash(proof[i], r);
                while (fn & 1 == 0 && fn != 0) {
                    fn >>= 1;
                    sn >>= 1;
                }
            } else {
                r = _nodeHash(r, proof[i]);
            }
            fn >>= 1;
            sn >>= 1;
        }
        return sn == 0 && r == root;
    }

    function _nodeHash(bytes32 left, bytes32 right) internal pure returns (bytes32) {
        return sha256(abi.encodePacked(bytes1(0x01), left, right));
    }
}
