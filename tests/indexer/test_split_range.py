"""How the indexer cuts a range it read at once into the parts it stores one transaction each."""

from __future__ import annotations

from crm_ledger.indexer.events import (
    BatchAnchored,
    LogLocation,
    TokenEvent,
    TokenEventKind,
    split_range,
)


def _at(block: int) -> LogLocation:
    return LogLocation(
        block_number=block, block_hash=bytes([block]) * 32, tx_hash=b"\0" * 32, log_index=0
    )


def _batch(block: int, count: int) -> BatchAnchored:
    return BatchAnchored(
        batch_id=block, first_seq=0, count=count, root=b"\1" * 32, head=b"\2" * 32, at=_at(block)
    )


def _token(block: int) -> TokenEvent:
    return TokenEvent(kind=TokenEventKind.TRANSFER, amount=1, at=_at(block))


def _hashes(*blocks: int) -> dict[int, bytes]:
    return {block: bytes([block]) * 32 for block in blocks}


def test_a_small_range_is_one_part() -> None:
    batches, tokens = [_batch(3, 10), _batch(5, 10)], [_token(5)]
    (part,) = split_range(1, 9, batches, tokens, _hashes(3, 5, 9), max_records=100)
    assert (part.start, part.end) == (1, 9)
    assert part.batches == batches and part.token_events == tokens
    assert part.block_hashes == _hashes(3, 5, 9)


def test_a_range_with_no_event_is_one_part() -> None:
    (part,) = split_range(1, 9, [], [], _hashes(9), max_records=1)
    assert (part.start, part.end, part.batches, part.block_hashes) == (1, 9, [], _hashes(9))


def test_parts_end_at_event_blocks_and_cover_the_range() -> None:
    batches = [_batch(2, 3), _batch(4, 3), _batch(6, 1)]
    tokens = [_token(6), _token(7)]
    parts = split_range(1, 9, batches, tokens, _hashes(2, 4, 6, 7, 9), max_records=4)
    assert [(p.start, p.end) for p in parts] == [(1, 2), (3, 4), (5, 9)]
    assert [p.batches for p in parts] == [[batches[0]], [batches[1]], [batches[2]]]
    assert parts[2].token_events == tokens
    # Each part carries the hash of its last block and of its event blocks, nothing else.
    assert [p.block_hashes for p in parts] == [_hashes(2), _hashes(4), _hashes(6, 7, 9)]


def test_one_block_heavier_than_the_limit_is_never_split() -> None:
    batches = [_batch(2, 5_000), _batch(3, 1)]
    parts = split_range(2, 3, batches, [], _hashes(2, 3), max_records=2_000)
    assert [(p.start, p.end, len(p.batches)) for p in parts] == [(2, 2, 1), (3, 3, 1)]
