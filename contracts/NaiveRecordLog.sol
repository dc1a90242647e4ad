// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title NaiveRecordLog
/// @notice Benchmark baseline only, never deployed by the service: the "one transaction per
/// record" design that crm-ledger's batched anchoring is measured against. Each call logs one
/// record hash and counts it.
contract NaiveRecordLog {
    /// @notice Number of records logged so far.
    uint256 public recordCount;

    /// @notice A record with hash `recordHash` was logged as number `index`.
    /// @param index Position of the record, counted from 0.
    /// @param recordHash The record's hash.
    event RecordLogged(uint256 indexed index, bytes32 recordHash);

    /// @notice Log one record hash.
    /// @param recordHash The record's hash.
    function logRecord(bytes32 recordHash) external {
        uint256 index = recordCount;
        recordCount = index + 1;
        emit RecordLogged(index, recordHash);
    }
}
