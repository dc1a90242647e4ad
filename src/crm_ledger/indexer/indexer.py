"""The indexer: follows AuditLedger and LoyaltyToken events into the CRM view, reorg-safe.

Exports: `Indexer`, `IndexerStats`, `make_indexer`, `DEPLOYMENT_CHECK_SECONDS`,
`PRUNE_INTERVAL_SECONDS`.

One round (`step`):

1. Make sure there is a stream (a cursor) for the latest deployment of each followed contract;
   a LoyaltyToken deployed later gets a stream that starts at its deployment block.
2. Every `DEPLOYMENT_CHECK_SECONDS`, and before any rollback: the chain id, the genesis hash
   and the code at each contract's address must still be what was recorded. If not, the chain
   was reset: `ChainReset`, and the indexer stops (the view keeps what it had; nothing is
   rolled back, since a reset chain is not a reorg to follow).
3. Reorg check: the chain's hash of the highest block the indexer stored must still be the
   stored one. If not, the fork is the highest stored block the chain still has: the stored
   recent hashes and the block hash kept with every indexed event, bisected. Everything above
   it is rolled back (`store.roll_back`) and read again from there.
4. Read the next range: the streams furthest behind, from their cursor up to `chunk` blocks,
   never past head - `confirmations`. The hash of the range's last block is read before the
   logs; after them, the hashes of that block, of every block with a log and of the stored tip
   must all still be the chain's. If any moved, the logs may be from two chains (or from
   orphaned blocks a node still serves), and the round ends without writing; so does a
   range whose last block the node does not have. Three such rounds in a row are the node's
   failure, not a moving chain: `ChainUnavailable` (the supervisor backs off) until a range
   reads cleanly. Otherwise the range is written in one transaction.

A node that times out or answers garbage raises `ChainUnavailable`: the round writes nothing,
and `run` waits twice as long each time (up to `indexer_retry_max_seconds`); failing log
queries also halve the block range asked for, in case the node caps its answers.

Example (`indexer.worker.IndexingWorker` does this; the supervisor steps it, backing off on
`ChainUnavailable` and database errors, halting on `ChainReset`)::

    indexer = Indexer(session_factory=factory, source=JsonRpcSource(w3), settings=settings)
    changed = await indexer.step()
    if not changed:
        await indexer.housekeeping()
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, ClassVar

from eth_utils.crypto import keccak
from sqlalchemy.orm import Session, sessionmaker
from web3 import AsyncWeb3

from crm_ledger import feed, metrics
from crm_ledger.config import Settings
from crm_ledger.errors import ChainReset, ChainUnavailable
from crm_ledger.indexer import store
from crm_ledger.indexer.events import (
    BatchAnchored,
    TokenEvent,
    decode_batch_anchored,
    decode_token_event,
    split_range,
)
from crm_ledger.indexer.reconcile import TRIGGER_SCHEDULE, Reconciler, SourceReader
from crm_ledger.indexer.source import ChainSource, JsonRpcSource
from crm_ledger.indexer.store import StaleRange, Stream
from crm_ledger.loyalty.ops import reset_op
from crm_ledger.workers.lock import INDEXER

__all__ = [
    "DEPLOYMENT_CHECK_SECONDS",
    "PRUNE_INTERVAL_SECONDS",
    "Indexer",
    "IndexerStats",
    "make_indexer",
]

log = logging.getLogger(__name__)

DEPLOYMENT_CHECK_SECONDS = 5.0
#: How often an idle indexer looks for reconciliations requested by other processes.
REQUEST_POLL_SECONDS = 1.0
#: Rounds in a row in which the chain moved under a read before that counts as a bad node.
MAX_UNSETTLED_ROUNDS = 3
PRUNE_INTERVAL_SECONDS = 3600.0
_EMPTY_CODE_HASH = keccak(b"")


@dataclass
class IndexerStats:
    """What `/readyz` and the CRM view report about indexing."""

    #: Why the last step found nothing to do though the index is not caught up, if so.
    waiting_for: str | None = None
    head: int | None = None
    indexed_through: int | None = None
    lag_blocks: int = 0
    lag_seconds: float = 0.0
    reorgs: int = 0
    last_reorg_depth: int | None = None
    events_indexed: int = 0
    rolled_back_events: int = 0

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "waiting_for": self.waiting_for,
            "head": self.head,
            "indexed_through": self.indexed_through,
            "lag_blocks": self.lag_blocks,
            "lag_seconds": round(self.lag_seconds, 3),
            "reorgs": self.reorgs,
            "last_reorg_depth": self.last_reorg_depth,
            "events_indexed": self.events_indexed,
            "rolled_back_events": self.rolled_back_events,
        }


@dataclass
class Indexer:
    """Follows the chain into the view; see the module docstring."""

    name: ClassVar[str] = INDEXER

    session_factory: sessionmaker[Session]
    source: ChainSource
    settings: Settings
    #: Runs scheduled and requested reconciliations once the index has caught up.
    reconciler: Reconciler | None = None
    #: Called with a step name at each boundary; tests raise there to simulate a crash.
    checkpoint: Callable[[str], None] = lambda _step: None
    stats: IndexerStats = field(default_factory=IndexerStats)
    _chunk: int = 0
    _checked_at: float | None = None
    _caught_up_at: float = field(default_factory=time.monotonic)
    _reconciled_at: float | None = None
    _requests_checked_at: float | None = None
    _pruned_at: float | None = None
    _unsettled: int = 0
    #: (streams, stored tip, when read): see `_position`.
    _known: tuple[list[Stream], tuple[int, bytes] | None, float] | None = None

    def __post_init__(self) -> None:
        self._chunk = self.settings.indexer_chunk_blocks

    async def step(self) -> bool:
        """One round; True when it changed the view (or must look again at once)."""
        streams, tip = await self._position()
        if not streams:
            self.stats.waiting_for = "an AuditLedger deployment (none is recorded yet)"
            return False
        self.stats.waiting_for = None
        now = time.monotonic()
        if self._checked_at is None or now - self._checked_at >= DEPLOYMENT_CHECK_SECONDS:
            await self.check_deployments(streams)
        head = await self.source.head()
        safe = head - self.settings.confirmations
        if tip is not None and await self.source.block_hash(tip[0]) != tip[1]:
            self._known = None
            await self._roll_back_reorg(streams, tip[0])
            return True
        start = min(stream.next_block for stream in streams)
        if start > safe:
            self._progress(head, safe, streams, caught_up=True)
            return False
        group = [stream for stream in streams if stream.next_block == start]
        ahead = [stream.next_block - 1 for stream in streams if stream.next_block > start]
        end = min(start + self._chunk - 1, safe, *ahead)
        self._known = None
        indexed = await self._index_range(group, start, end, tip)
        if indexed is None:
            return True
        self._chunk = min(self._chunk * 2, self.settings.indexer_chunk_blocks)
        moved = [
            dataclasses.replace(stream, next_block=end + 1) if stream in group else stream
            for stream in streams
        ]
        new_tip = tip if tip is not None and tip[0] > end else (end, indexed)
        self._known = (moved, new_tip, time.monotonic())
        self._progress(head, safe, moved, caught_up=end >= safe)
        return True

    async def _position(self) -> tuple[list[Stream], tuple[int, bytes] | None]:
        """The streams and the stored tip: from memory while fresh, else from the database.

        The indexer is the only writer of both, so after writing it knows them without asking;
        they are read again every `DEPLOYMENT_CHECK_SECONDS` (to notice a deployment recorded
        meanwhile, such as the LoyaltyToken's) and after anything unexpected. An idle round
        therefore costs two RPC calls and no database transaction.
        """
        known = self._known
        if known is not None and time.monotonic() - known[2] < DEPLOYMENT_CHECK_SECONDS:
            return known[0], known[1]
        streams = await asyncio.to_thread(store.sync_streams, self.session_factory)
        tip = await asyncio.to_thread(store.tip, self.session_factory)
        self._known = (streams, tip, time.monotonic())
        return streams, tip

    async def housekeeping(self) -> None:
        """Once caught up: due or requested reconciliations, feed pruning."""
        now = time.monotonic()
        if self.reconciler is not None:
            if (
                self._requests_checked_at is None
                or now - self._requests_checked_at >= REQUEST_POLL_SECONDS
            ):
                self._requests_checked_at = now
                await self.reconciler.run_requested()
            interval = self.settings.reconcile_interval_seconds
            if self._reconciled_at is None or now - self._reconciled_at >= interval:
                self._reconciled_at = now
                await self.reconciler.run(trigger=TRIGGER_SCHEDULE)
        if self._pruned_at is None or now - self._pruned_at >= PRUNE_INTERVAL_SECONDS:
            self._pruned_at = now
            retention = timedelta(days=self.settings.feed_retention_days)
            pruned = await asyncio.to_thread(feed.prune, self.session_factory, retention=retention)
            if pruned:
                log.info("change feed: pruned %d events older than %s", pruned, retention)

    async def check_deployments(self, streams: Sequence[Stream]) -> None:
        """Raise `ChainReset` unless every followed contract is still where it was deployed."""
        chain_id = await self.source.chain_id()
        genesis = await self.source.block_hash(0)
        for stream in streams:
            if chain_id != stream.chain_id:
                problem = f"the node is chain {chain_id}, not chain {stream.chain_id}"
                expected, found = f"chain id {stream.chain_id}", f"chain id {chain_id}"
            elif genesis != stream.genesis_hash:
                problem = "the chain was reset or replaced (its genesis block changed)"
                expected = "genesis 0x" + stream.genesis_hash.hex()
                found = "genesis 0x" + (genesis or b"").hex()
            else:
                code_hash = await self.source.code_hash(stream.address)
                if code_hash == stream.code_hash:
                    continue
                problem = (
                    "the contract's code is gone"
                    if code_hash == _EMPTY_CODE_HASH
                    else "another contract's code is at its address"
                )
                expected, found = "code 0x" + stream.code_hash.hex(), "code 0x" + code_hash.hex()
            raise ChainReset(
                f"{stream.contract} epoch {stream.epoch} at {stream.address} is not on the chain "
                f"at {self.source.rpc_url} any more: {problem}. Indexing is stopped and the CRM "
                "view keeps what it had indexed, so its ledger states may be out of date. Once "
                "`crm-ledger chain recover` has opened a new epoch, restart the service and "
                "the indexer follows it.",
                expected=expected,
                found=found,
            )
        self._checked_at = time.monotonic()

    async def _index_range(
        self, group: Sequence[Stream], start: int, end: int, tip: tuple[int, bytes] | None
    ) -> bytes | None:
        """Read and store blocks `start`..`end` for `group`; the hash of block `end` as stored,
        or None when the chain moved (nothing written)."""
        end_hash = await self.source.block_hash(end)
        if end_hash is None:
            self._unsettled_round(start, end, f"block {end} is not on its chain")
            return None
        try:
            logs = await self.source.logs(
                addresses=[stream.address for stream in group],
                topics=[topic for stream in group for topic in stream.topics],
                from_block=start,
                to_block=end,
            )
        except ChainUnavailable:
            self._chunk = max(1, (end - start + 1) // 2)
            raise
        block_hashes = {raw.block_number: raw.block_hash for raw in logs}
        # Each log's block must still be the chain's at its height: a node can answer
        # eth_getLogs with logs of blocks a reorg has just orphaned. Checked after the logs
        # were read, and with the range's last block unchanged since before: then every block
        # stored is an ancestor of that one.
        if (
            block_hashes.setdefault(end, end_hash) != end_hash
            or await self.source.block_hashes(sorted(block_hashes)) != block_hashes
            or (tip is not None and await self.source.block_hash(tip[0]) != tip[1])
        ):
            self._unsettled_round(start, end, "logs of blocks that are not on its chain")
            return None
        self._unsettled = 0
        by_address = {stream.address.lower(): stream for stream in group}
        batches: list[BatchAnchored] = []
        token_events: list[TokenEvent] = []
        for raw in logs:
            try:
                if by_address[raw.address].contract == store.LEDGER:
                    batches.append(decode_batch_anchored(raw))
                else:
                    token_events.append(decode_token_event(raw))
            except ChainUnavailable as exc:
                raise ChainUnavailable(
                    f"the node at {self.source.rpc_url} answered eth_getLogs({start}..{end}) "
                    f"with garbage: {exc}"
                ) from None
        self.checkpoint("fetched")
        for part in split_range(start, end, batches, token_events, block_hashes):
            try:
                applied = await asyncio.to_thread(
                    store.apply_range,
                    self.session_factory,
                    streams=group,
                    from_block=part.start,
                    to_block=part.end,
                    block_hashes=part.block_hashes,
                    batches=part.batches,
                    token_events=part.token_events,
                )
            except StaleRange as exc:
                log.warning("indexer: range %d..%d not written: %s", part.start, part.end, exc)
                self._checked_at = None
                return None
            self.checkpoint("applied")
            if applied.batches:
                metrics.indexer_events_total.labels("BatchAnchored").inc(applied.batches)
            if applied.token_events:
                metrics.indexer_events_total.labels("LoyaltyToken").inc(applied.token_events)
            self.stats.events_indexed += applied.batches + applied.token_events
        return end_hash

    def _unsettled_round(self, start: int, end: int, what: str) -> None:
        """A range read while the chain moved: nothing is written and the next round reads it
        again at once, unless the node answered so `MAX_UNSETTLED_ROUNDS` times in a row.
        Then it is the node, not a moving chain, and every round backs off (`ChainUnavailable`)
        until a range reads cleanly again, saying what the node answered: an indexer retrying
        at once forever would hammer the node and say nothing."""
        self._unsettled += 1
        if self._unsettled >= MAX_UNSETTLED_ROUNDS:
            raise ChainUnavailable(
                f"the node at {self.source.rpc_url} keeps answering the reads of blocks "
                f"{start}..{end} with {what}"
            )
        log.info(
            "indexer: the chain moved while blocks %d..%d were read (%s); again", start, end, what
        )

    async def _roll_back_reorg(self, streams: Sequence[Stream], tip_number: int) -> None:
        """The chain lost the stored tip: check it is not a reset, find the fork, roll back."""
        await self.check_deployments(streams)
        candidates = await asyncio.to_thread(
            store.fork_candidates, self.session_factory, streams=streams
        )
        kept = await self._highest_on_chain(candidates)
        fork = kept + 1 if kept is not None else 0
        rolled = await asyncio.to_thread(store.roll_back, self.session_factory, from_block=fork)
        depth = tip_number - fork + 1
        # What /readyz shows until the next range is read: the cursor went back to the fork.
        if self.stats.indexed_through is not None:
            self.stats.indexed_through = min(self.stats.indexed_through, fork - 1)
        self.stats.reorgs += 1
        self.stats.last_reorg_depth = depth
        self.stats.rolled_back_events += rolled.batches + rolled.token_events
        metrics.indexer_reorgs_total.inc()
        where = (
            f"from block {fork}"
            if kept is not None
            else "entirely (no indexed block is on the chain any more)"
        )
        log.warning(
            "indexer: reorg of at least %d block(s) below block %d: rolled back %s "
            "(%d batch events, %d token events; %d compensating feed events); re-indexing",
            depth,
            tip_number,
            where,
            rolled.batches,
            rolled.token_events,
            rolled.feed_events,
        )

    async def _highest_on_chain(self, candidates: Sequence[tuple[int, bytes]]) -> int | None:
        """The highest candidate block the chain still has (bisection: they form a prefix)."""
        low, high, found = 0, len(candidates) - 1, None
        while low <= high:
            middle = (low + high) // 2
            number, block_hash = candidates[middle]
            if await self.source.block_hash(number) == block_hash:
                found = number
                low = middle + 1
            else:
                high = middle - 1
        return found

    def _progress(
        self, head: int, safe: int, streams: Sequence[Stream], *, caught_up: bool
    ) -> None:
        through = min(stream.next_block for stream in streams) - 1
        now = time.monotonic()
        lag = max(0, safe - through)
        if caught_up or lag == 0:
            self._caught_up_at = now
        self.stats.head = head
        self.stats.indexed_through = through
        self.stats.lag_blocks = lag
        self.stats.lag_seconds = now - self._caught_up_at
        metrics.indexer_lag_blocks.set(lag)
        metrics.indexer_lag_seconds.set(self.stats.lag_seconds)


def make_indexer(
    *, w3: AsyncWeb3[Any], session_factory: sessionmaker[Session], settings: Settings
) -> Indexer:
    """An indexer reading through `w3`, with its reconciler (which re-sends a missing issuance
    through the loyalty worker's `reset_op`); `indexer.worker.IndexingWorker` steps it."""
    source = JsonRpcSource(w3)
    return Indexer(
        session_factory=session_factory,
        source=source,
        settings=settings,
        reconciler=Reconciler(
            session_factory=session_factory, chain=SourceReader(source), resend_op=reset_op
        ),
    )
