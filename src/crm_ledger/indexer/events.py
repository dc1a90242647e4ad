"""Chain events the indexer follows, and their strict decoding from raw logs.

Exports: `RawLog`, `LogLocation`, `BatchAnchored`, `TokenEvent`, `TokenEventKind`,
`AUDIT_LEDGER_TOPICS`, `LOYALTY_TOKEN_TOPICS`, `decode_batch_anchored`, `decode_token_event`,
`MAX_STORED_AMOUNT`, `RangePart`, `split_range`, `APPLY_MAX_RECORDS`.

Topics come from the committed ABIs (`chain/artifacts`), so they cannot drift from the
contracts. Decoding is by hand rather than through eth-abi: the layouts are fixed, and the
indexer decodes tens of thousands of logs a second. Any log that does not have exactly the
layout of its event raises `ChainUnavailable`: our contracts cannot emit it, so the node
answered garbage, and nothing of that answer may reach the database.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eth_utils.crypto import keccak

from crm_ledger.chain.artifacts import load_artifact
from crm_ledger.errors import ChainError, ChainUnavailable

__all__ = [
    "APPLY_MAX_RECORDS",
    "AUDIT_LEDGER_TOPICS",
    "LOYALTY_TOKEN_TOPICS",
    "MAX_STORED_AMOUNT",
    "BatchAnchored",
    "LogLocation",
    "RangePart",
    "RawLog",
    "TokenEvent",
    "TokenEventKind",
    "decode_batch_anchored",
    "decode_token_event",
    "split_range",
]

#: Points are stored as signed 64-bit integers; LoyaltyToken amounts are whole points.
MAX_STORED_AMOUNT = 2**63 - 1
_WORD = 32


@dataclass(frozen=True, slots=True)
class RawLog:
    """One log as `eth_getLogs` returned it, already checked for shape."""

    address: str  # lower-case 0x-hex
    topics: tuple[bytes, ...]
    data: bytes
    block_number: int
    block_hash: bytes
    tx_hash: bytes
    log_index: int


@dataclass(frozen=True, slots=True)
class LogLocation:
    """Where an event was logged: what a reorg can take away."""

    block_number: int
    block_hash: bytes
    tx_hash: bytes
    log_index: int


@dataclass(frozen=True, slots=True)
class BatchAnchored:
    """AuditLedger's `BatchAnchored(batchId, firstSeq, count, root, head)`."""

    batch_id: int
    first_seq: int
    count: int
    root: bytes
    head: bytes
    at: LogLocation


class TokenEventKind(enum.StrEnum):
    """The LoyaltyToken events the indexer keeps."""

    ISSUED = "issued"
    REDEEMED = "redeemed"
    EXPIRED = "expired"
    TRANSFER = "transfer"


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """One LoyaltyToken event; fields that do not apply to its kind are None.

    `token_id` is the issuance id (Issued) or burn id (Redeemed, Expired); `reference` the
    redemption ref or expiry reason; addresses are lower-case 0x-hex, None for the zero address
    (the other side of a mint or a burn).
    """

    kind: TokenEventKind
    amount: int
    at: LogLocation
    token_id: bytes | None = None
    campaign: bytes | None = None
    reference: bytes | None = None
    from_address: str | None = None
    to_address: str | None = None


def _signature(abi: Sequence[dict[str, Any]], name: str) -> bytes:
    entry = next(item for item in abi if item["type"] == "event" and item["name"] == name)
    types = ",".join(argument["type"] for argument in entry["inputs"])
    return keccak(text=f"{name}({types})")


_LEDGER_ABI = load_artifact("AuditLedger").abi
_TOKEN_ABI = load_artifact("LoyaltyToken").abi
BATCH_ANCHORED_TOPIC = _signature(_LEDGER_ABI, "BatchAnchored")
_TOKEN_TOPICS: dict[bytes, TokenEventKind] = {
    _signature(_TOKEN_ABI, "Issued"): TokenEventKind.ISSUED,
    _signature(_TOKEN_ABI, "Redeemed"): TokenEventKind.REDEEMED,
    _signature(_TOKEN_ABI, "Expired"): TokenEventKind.EXPIRED,
    _signature(_TOKEN_ABI, "Transfer"): TokenEventKind.TRANSFER,
}
#: topic0 values to ask `eth_getLogs` for, per contract.
AUDIT_LEDGER_TOPICS: tuple[bytes, ...] = (BATCH_ANCHORED_TOPIC,)
LOYALTY_TOKEN_TOPICS: tuple[bytes, ...] = tuple(_TOKEN_TOPICS)


def _garbage(log: RawLog, what: str) -> ChainUnavailable:
    return ChainUnavailable(
        f"a log the contract at {log.address} cannot have emitted (block {log.block_number}, "
        f"log {log.log_index}): {what}"
    )


def _location(log: RawLog) -> LogLocation:
    return LogLocation(
        block_number=log.block_number,
        block_hash=log.block_hash,
        tx_hash=log.tx_hash,
        log_index=log.log_index,
    )


def _uint(word: bytes, bits: int, log: RawLog, field: str) -> int:
    value = int.from_bytes(word, "big")
    if value >> bits:
        raise _garbage(log, f"{field} does not fit in uint{bits}")
    return value


def _address(word: bytes, log: RawLog, field: str) -> str | None:
    if any(word[:12]):
        raise _garbage(log, f"{field} is not an address")
    if not any(word):
        return None
    return "0x" + word[12:].hex()


def _amount(word: bytes, log: RawLog) -> int:
    value = int.from_bytes(word, "big")
    if value > MAX_STORED_AMOUNT:
        # Our own issuer minted it, so this is real: stop rather than store a wrong number.
        raise ChainError(
            f"LoyaltyToken event at block {log.block_number}, log {log.log_index} moves {value} "
            f"points, more than the indexer stores ({MAX_STORED_AMOUNT}); indexing stopped"
        )
    return value


def _words(log: RawLog, count: int) -> list[bytes]:
    if len(log.data) != count * _WORD:
        raise _garbage(log, f"data is {len(log.data)} bytes, the event has {count * _WORD}")
    return [log.data[i : i + _WORD] for i in range(0, len(log.data), _WORD)]


def decode_batch_anchored(log: RawLog) -> BatchAnchored:
    """The `BatchAnchored` event in `log`; raises `ChainUnavailable` for any other layout."""
    if len(log.topics) != 2 or log.topics[0] != BATCH_ANCHORED_TOPIC:
        raise _garbage(log, "not a BatchAnchored event")
    first_seq, count, root, head = _words(log, 4)
    batch_id = int.from_bytes(log.topics[1], "big")
    if batch_id > MAX_STORED_AMOUNT:
        raise _garbage(log, "batch id beyond 2**63 - 1")
    return BatchAnchored(
        batch_id=batch_id,
        first_seq=_uint(first_seq, 64, log, "firstSeq"),
        count=_uint(count, 32, log, "count"),
        root=root,
        head=head,
        at=_location(log),
    )


def decode_token_event(log: RawLog) -> TokenEvent:
    """The LoyaltyToken event in `log`; raises `ChainUnavailable` for any other layout."""
    kind = _TOKEN_TOPICS.get(log.topics[0]) if log.topics else None
    at = _location(log)
    if kind is TokenEventKind.ISSUED and len(log.topics) == 4:
        (amount,) = _words(log, 1)
        return TokenEvent(
            kind=kind,
            amount=_amount(amount, log),
            at=at,
            campaign=log.topics[1],
            token_id=log.topics[2],
            to_address=_address(log.topics[3], log, "to"),
        )
    if kind in (TokenEventKind.REDEEMED, TokenEventKind.EXPIRED) and len(log.topics) == 3:
        amount, reference = _words(log, 2)
        return TokenEvent(
            kind=kind,
            amount=_amount(amount, log),
            at=at,
            token_id=log.topics[1],
            from_address=_address(log.topics[2], log, "from"),
            reference=reference,
        )
    if kind is TokenEventKind.TRANSFER and len(log.topics) == 3:
        (amount,) = _words(log, 1)
        return TokenEvent(
            kind=kind,
            amount=_amount(amount, log),
            at=at,
            from_address=_address(log.topics[1], log, "from"),
            to_address=_address(log.topics[2], log, "to"),
        )
    raise _garbage(log, "not an Issued, Redeemed, Expired or Transfer event")


#: Feed rows one transaction of the indexer writes at most, give or take one block's events: a
#: `record.anchored` per record of each batch and one row per token event. Catching up on
#: thousands of anchored records in one transaction held SQLite's write lock, which every API
#: write waits for, for a quarter of a second (docs/benchmarks.md); a part of a range is stored
#: and its stream advanced on its own, so a crash between parts leaves the rest for the next round.
APPLY_MAX_RECORDS = 2_000


@dataclass(frozen=True, slots=True)
class RangePart:
    """Blocks `start`..`end` of a range read at once, with their events, stored in one
    transaction; `block_hashes` holds the hash of `end` and of every block with an event."""

    start: int
    end: int
    batches: list[BatchAnchored]
    token_events: list[TokenEvent]
    block_hashes: dict[int, bytes]


def split_range(
    start: int,
    end: int,
    batches: Sequence[BatchAnchored],
    token_events: Sequence[TokenEvent],
    block_hashes: dict[int, bytes],
    *,
    max_records: int | None = None,
) -> list[RangePart]:
    """Blocks `start`..`end` cut at block boundaries into parts of at most `max_records` feed
    rows each (one block's events are never split, so a part can hold more); one part when the
    range is small (`max_records`: `APPLY_MAX_RECORDS` when None). `block_hashes` must hold the
    hash of `end` and of every block with an event."""
    limit = APPLY_MAX_RECORDS if max_records is None else max_records
    weights: dict[int, int] = {}
    for batch in batches:
        weights[batch.at.block_number] = weights.get(batch.at.block_number, 0) + batch.count
    for event in token_events:
        weights[event.at.block_number] = weights.get(event.at.block_number, 0) + 1
    ends: list[int] = []
    total, previous = 0, start
    for block in sorted(weights):
        if total and total + weights[block] > limit:
            ends.append(previous)
            total = 0
        total += weights[block]
        previous = block
    ends.append(end)
    parts: list[RangePart] = []
    first = start
    for last in ends:
        parts.append(
            RangePart(
                start=first,
                end=last,
                batches=[b for b in batches if first <= b.at.block_number <= last],
                token_events=[e for e in token_events if first <= e.at.block_number <= last],
                block_hashes={n: h for n, h in block_hashes.items() if first <= n <= last},
            )
        )
        first = last + 1
    return parts
