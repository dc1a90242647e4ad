"""Reorgs on a real Anvil, under load: the view ends equal to a fresh re-index of the chain.

The anchorer, the indexer (0 confirmations, so every reorg reaches indexed blocks) and a load of
records and token operations run together; then Anvil reorganises the last blocks
(`anvil_reorg`, whose new blocks drop the old transactions: the anchorer must anchor those
batches again) or reverts to a snapshot and mines different blocks (`evm_snapshot` /
`evm_revert`). When everything has settled, the indexed state is compared with what a fresh
indexer derives from the same chain, and the change feed, folded up, must say the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from eth_utils.crypto import keccak
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.db.models import Batch, Customer, IndexedBatch, IndexedTokenEvent, Record
from crm_ledger.errors import ChainUnavailable
from crm_ledger.indexer import store
from crm_ledger.indexer.indexer import Indexer
from crm_ledger.loyalty.chain import TokenRejected
from crm_ledger.workers import Supervisor
from tests.anchoring.fakes import add_records
from tests.indexer.conftest import AnvilChain, Dropped, Token, add_wallet
from tests.indexer.helpers import (
    add_more_records,
    confirmed_records,
    folded_feed,
    settled,
    view_snapshot,
)
from tests.waiting import wait_for_async

pytestmark = [pytest.mark.chain, pytest.mark.asyncio]

#: Seconds between polls: short, so a disturbance follows the indexer catching up closely.
POLL = 0.02

HOLDERS = ["0x" + f"{n:02x}" * 20 for n in (0xA1, 0xA2, 0xA3)]
TRANSFER_TOPIC = "0x" + keccak(text="Transfer(address,address,uint256)").hex()
ZERO = "0x" + "00" * 20


class Load:
    """Records every 20 ms, and a token issuance or redemption every few rounds."""

    def __init__(self, chain: AnvilChain, token: Token, customer_pks: list[int]) -> None:
        self.chain = chain
        self.token = token
        self.customer_pks = customer_pks
        self.stop = asyncio.Event()
        # Set while the test waits for the indexer to reach the head: a head that moves every
        # 20 ms can outrun an indexer on a loaded machine forever.
        self.hold = asyncio.Event()
        self.ids = itertools.count(1)

    async def run(self) -> None:
        for round_ in itertools.count():
            if self.stop.is_set():
                return
            if self.hold.is_set():
                await asyncio.sleep(0.02)
                continue
            await asyncio.to_thread(
                add_more_records, self.chain.session_factory, self.customer_pks, 1
            )
            if round_ % 3 == 0:
                n = next(self.ids)
                holder = HOLDERS[n % len(HOLDERS)]
                # A reorg between the balance check and the redemption makes it revert (or be
                # rejected when estimated); a read made while Anvil rewinds may name a block that
                # just went away, which the node answers with an error.
                with contextlib.suppress(Dropped, TokenRejected, ChainUnavailable):
                    if n % 4 == 0 and await self.token.balance_of(holder) >= 2:
                        await self.token.redeem(n.to_bytes(32, "big"), holder, 2, b"\x07" * 32)
                    else:
                        await self.token.issue(b"\x01" * 32, [(n.to_bytes(32, "big"), holder, 5)])
            await asyncio.sleep(0.02)


async def run_under_load(
    chain: AnvilChain,
    disturb: Callable[[], Awaitable[None]],
    *,
    reach: int | None,
    confirmations: int = 0,
) -> None:
    """Anchor and index under load, `disturb` the chain twice, settle, compare with a re-index.

    `reach`: how many blocks below the head `disturb` replaces (None: it makes the indexed
    events it orphans itself). Each disturbance waits until the indexer has an event in those
    blocks, so that it has something to roll back however slow the machine is."""
    token = await chain.deploy_token()
    # History no reorg reaches: the contracts must outlive every disturbance.
    await chain.mine(20)
    add_records(chain.session_factory, customers=3, each=2)
    with chain.session_factory() as session:
        customer_pks = list(session.scalars(select(Customer.pk).order_by(Customer.pk)))
    for pk, holder in zip(customer_pks, HOLDERS, strict=True):
        add_wallet(chain.session_factory, pk, holder)
    anchorer = chain.anchorer(batch_max_records=3)
    indexer = chain.indexer(confirmations=confirmations, indexer_chunk_blocks=7)
    load = Load(chain, token, customer_pks)
    rounds = count_rounds(indexer)
    supervisor = Supervisor(engine=None, idle_seconds=0.05, max_backoff_seconds=5.0)
    supervisor.add(anchorer, singleton=False)
    supervisor.add(indexer, singleton=False)
    # The indexer's and anchorer's INFO lines (a range read again because the chain moved, a
    # transaction sent again) go into the captured log of a run that fails.
    for name in ("crm_ledger.indexer", "crm_ledger.anchoring"):
        logging.getLogger(name).setLevel(logging.INFO)

    async def node_check() -> None:
        await xfail_if_the_node_contradicts_itself(chain, supervisor, [token.client])

    await supervisor.start()
    tasks = [asyncio.create_task(load.run())]
    try:
        for _ in range(2):
            await asyncio.sleep(0.6)

            await hold_within_reach(chain, indexer, load, reach, confirmations, node_check)
            await disturb()
            load.hold.clear()
        await asyncio.sleep(0.6)
        load.stop.set()
        await tasks.pop()

        async def quiet() -> bool:
            await node_check()
            if not await asyncio.to_thread(settled, chain.session_factory):
                return False
            head = await chain.head()
            return indexer.stats.indexed_through == head - confirmations

        # Settling after two disturbances normally takes seconds. About 1 run in 70 here took
        # ~60 s, on SQLite and PostgreSQL alike, with nothing logged (under investigation, see
        # the session notes); this test is about what the view holds once settled.
        await wait_for_async(
            quiet,
            150,
            interval=POLL,
            what=lambda: (
                f"anchoring and indexing to settle: {supervisor.status()}, "
                f"settled={settled(chain.session_factory)}, indexer {indexer.stats.to_json()}, "
                f"its rounds {dict(rounds)}, streams and tip {indexer._known}"
            ),
        )
        if confirmations:
            await chain.mine(confirmations)
            await wait_for_async(quiet, what="the last blocks to be confirmed", interval=POLL)
    finally:
        load.stop.set()
        await asyncio.gather(*tasks)
        await supervisor.stop()
        for name in ("crm_ledger.indexer", "crm_ledger.anchoring"):
            logging.getLogger(name).setLevel(logging.NOTSET)
    assert supervisor.status()["indexer"]["failures_in_a_row"] == 0, supervisor.status()
    # A disturbance can land on a block mined after the indexer last caught up, which it never
    # read (nothing to roll back): at least one of them must have reached indexed events.
    assert indexer.stats.reorgs >= 1
    assert indexer.stats.rolled_back_events > 0

    seen = view_snapshot(chain.session_factory)
    try:
        feed = folded_feed(chain.session_factory)
    except AssertionError:
        # A record anchored twice without a retraction between: either the indexer missed a
        # rollback (a failure), or the node logged one batch twice on the chain it calls
        # canonical, which no consistent chain can do (the contract takes each batch id once):
        # anvil_reorg re-mines a dropped block's transactions yet can leave state behind
        # (foundry-rs/foundry#10809). Only the second, proven from the node's own answers, is
        # the node's failure.
        twice = await batches_logged_twice(chain)
        if twice:
            pytest.xfail(
                f"Anvil logged BatchAnchored more than once for batch(es) {twice} (batch id -> "
                "blocks) on its canonical chain: its logs and its state disagree "
                "(foundry-rs/foundry#10809); the feed followed its logs"
            )
        raise
    confirmed = confirmed_records(chain.session_factory)
    with chain.session_factory() as session:
        record_count = len(session.scalars(select(Record.pk)).all())
        tokens = session.execute(
            select(IndexedTokenEvent.event, IndexedTokenEvent.amount).where(
                IndexedTokenEvent.event != "transfer"
            )
        ).all()
    if len(confirmed) != record_count:
        unlogged = await batches_held_without_a_log(chain)
        if unlogged:
            # Seen about once in 30 runs, before session 14's changes too: after `evm_revert`
            # the node's state holds a batch (its `nextSeq()` is past it) that no block it
            # calls canonical logs. Only the node's own answers prove it.
            pytest.xfail(
                f"Anvil's nextSeq() is past batch(es) {unlogged} but none of its canonical "
                "blocks logs BatchAnchored for them: its state and its logs disagree; the index "
                "followed its logs"
            )
    # Every record is confirmed, and the feed says exactly that, at the same place.
    assert len(confirmed) == record_count
    assert confirmed == feed["records"]
    assert feed["rewards"] == sorted((f"reward.{event}", amount) for event, amount in tokens)
    on_chain = {holder: await token.balance_of(holder) for holder in HOLDERS}
    head = await chain.head()

    await asyncio.to_thread(store.reset_index, chain.session_factory)
    emptied = view_snapshot(chain.session_factory)
    assert emptied["batches"] == emptied["tokens"] == emptied["balances"] == []
    await chain.index(chain.indexer(confirmations=confirmations))
    fresh = view_snapshot(chain.session_factory)
    for part in ("batches", "tokens", "balances", "streams"):
        assert fresh[part] == seen[part], (part, head)
    indexed = {row[1]: row[2] for row in seen["balances"]}
    indexed_balances = {holder: indexed.get(holder, 0) for holder in HOLDERS}
    # The index holds exactly what the node's own Transfer logs add up to (counted here from
    # raw eth_getLogs, without the indexer)...
    from_logs = await balances_from_logs(chain, token.client.address or "")
    assert indexed_balances == from_logs
    if from_logs != on_chain:
        # ...and the node's logs and state agree, except when anvil_reorg leaves Anvil
        # inconsistent with itself (seen about once in 50 runs here: a mint its logs show and
        # `balanceOf` does not). Both figures are the node's own answers: the view was just
        # shown equal to a fresh reindex and to the node's logs, so no indexer could do better.
        # That run is reported as the node's failure (xfail, with the evidence), never a pass.
        evidence = await node_disagreement(chain, token.client.address or "", from_logs, on_chain)
        pytest.xfail(
            f"Anvil disagrees with itself at block {head}: {evidence} "
            "(foundry-rs/foundry#10809: anvil_reorg does not rewire blocks as a reorg should)"
        )
    assert indexed_balances == on_chain


async def hold_within_reach(
    chain: AnvilChain,
    indexer: Indexer,
    load: Load,
    reach: int | None,
    confirmations: int,
    check_node: Callable[[], Awaitable[None]],
) -> None:
    """Hold the load once the indexer has reached the head and (with `reach`) has indexed an
    event in the last `reach` blocks: on a slow machine the blocks a reorg replaces may
    otherwise hold nothing indexed yet, and the test would roll back nothing. `check_node`
    ends the test (xfail) when the indexer cannot get there because the node is broken."""

    async def ready() -> bool:
        await check_node()
        load.hold.set()
        head = await chain.head()
        if indexer.stats.indexed_through != head - confirmations:
            return False
        if reach is None:
            return True
        newest = await asyncio.to_thread(newest_indexed_block, chain.session_factory)
        if newest is not None and newest > head - reach:
            return True
        # Nothing indexed in reach: let the load add blocks with events, then look again.
        load.hold.clear()
        await asyncio.sleep(0.1)
        return False

    await wait_for_async(
        ready,
        what=lambda: f"the indexer to reach the head with an event in reach: {indexer.stats}",
        interval=POLL,
    )


def newest_indexed_block(session_factory: sessionmaker[Session]) -> int | None:
    """The highest block holding an indexed batch or token event."""
    with session_factory() as session:
        batches = session.scalar(select(func.max(IndexedBatch.block_number)))
        tokens = session.scalar(select(func.max(IndexedTokenEvent.block_number)))
    found = [block for block in (batches, tokens) if block is not None]
    return max(found) if found else None


async def xfail_if_the_node_contradicts_itself(
    chain: AnvilChain, supervisor: Supervisor, contracts: list[Any]
) -> None:
    """When the indexer backs off because the node keeps answering reads with blocks that are
    not on its chain, and the node's own answers prove it twice a second apart (a block below
    the head it reports that it does not have, or a log whose block hash is not the hash of
    the block it calls canonical at that height), the run is the node's failure: xfail with
    the evidence. The indexer is right to refuse such a range (it backs off and says why), and
    the test could only wait out its timeout."""
    message = supervisor.status()["indexer"]["message"]
    if "not on its chain" not in message:
        return
    addresses = [chain.deployment.address] + [contract.address for contract in contracts]
    evidence = await node_contradictions(chain, addresses)
    if not evidence:
        return
    await asyncio.sleep(1.0)
    if await node_contradictions(chain, addresses) == evidence:
        pytest.xfail(
            f"Anvil contradicts itself after anvil_reorg: {evidence}; the indexer backs off: "
            f"{message} (foundry-rs/foundry#10809: anvil_reorg does not rewire blocks as a "
            "reorg should)"
        )


async def node_contradictions(chain: AnvilChain, addresses: list[str]) -> str:
    """What the node answers that no chain could: blocks missing below its head, logs of
    blocks it does not call canonical ('' when none)."""
    head = await chain.head()
    missing = [
        number
        for number in range(head + 1)
        if await chain.rpc("eth_getBlockByNumber", hex(number), False) is None
    ]
    orphaned = await logs_in_orphaned_blocks(chain, addresses)
    found = []
    if missing:
        found.append(f"head {head} but no block {missing}")
    if orphaned:
        found.append(
            "logs of blocks not on its chain (number, the log's block hash, the canonical "
            f"one) {orphaned[:5]}"
        )
    return "; ".join(found)


async def logs_in_orphaned_blocks(
    chain: AnvilChain, addresses: list[str]
) -> list[tuple[int, str, str | None]]:
    """Logs of `addresses` (from block 0 to the head) whose block hash is not the one the node
    gives for that height."""
    logs = await chain.rpc(
        "eth_getLogs", {"address": addresses, "fromBlock": "0x0", "toBlock": "latest"}
    )
    orphaned = []
    for log in logs:
        block = await chain.rpc("eth_getBlockByNumber", log["blockNumber"], False)
        canonical = block["hash"] if block is not None else None
        if canonical != log["blockHash"]:
            orphaned.append((int(log["blockNumber"], 16), log["blockHash"], canonical))
    return orphaned


def count_rounds(indexer: Indexer) -> Counter[str]:
    """How the indexer's rounds ended (for the message of a test that timed out): ranges
    written, ranges read but not written (the chain moved, or a block was missing), rollbacks."""
    rounds: Counter[str] = Counter()
    index_range, roll_back = indexer._index_range, indexer._roll_back_reorg

    async def counted_range(*args: Any, **kwargs: Any) -> bytes | None:
        written = await index_range(*args, **kwargs)
        rounds["range written" if written is not None else "range not written"] += 1
        return written

    async def counted_roll_back(*args: Any, **kwargs: Any) -> None:
        rounds["rollback"] += 1
        await roll_back(*args, **kwargs)

    indexer._index_range = counted_range  # type: ignore[method-assign]
    indexer._roll_back_reorg = counted_roll_back  # type: ignore[method-assign]
    return rounds


async def batches_held_without_a_log(chain: AnvilChain) -> list[int]:
    """Batches the node's `nextSeq()` is past that no block it calls canonical logs."""
    logged = set()
    for event in await chain.ledger.batch_events(0):
        if await chain.ledger.block_hash(event.block_number) == event.block_hash:
            logged.add(event.batch_id)
    next_seq = await chain.ledger.next_seq()
    with chain.session_factory() as session:
        held = session.execute(
            select(Batch.id).where(Batch.first_seq + Batch.count <= next_seq).order_by(Batch.id)
        ).scalars()
        return [int(batch_id) for batch_id in held if batch_id not in logged]


async def batches_logged_twice(chain: AnvilChain) -> dict[int, list[int]]:
    """Batch ids with more than one BatchAnchored log in blocks the node calls canonical."""
    blocks: dict[int, list[int]] = {}
    for event in await chain.ledger.batch_events(0):
        if await chain.ledger.block_hash(event.block_number) == event.block_hash:
            blocks.setdefault(event.batch_id, []).append(event.block_number)
    return {batch: found for batch, found in blocks.items() if len(found) > 1}


async def node_disagreement(
    chain: AnvilChain, token_address: str, from_logs: dict[str, int], on_chain: dict[str, int]
) -> str:
    """What the node answered that does not add up: per holder, its log sum and its
    `balanceOf`, and which of its token logs sit in blocks it no longer calls canonical."""
    orphaned = [block for block, _, _ in await logs_in_orphaned_blocks(chain, [token_address])]
    differing = {h: (from_logs[h], on_chain[h]) for h in HOLDERS if from_logs[h] != on_chain[h]}
    return (
        f"(log sum, balanceOf) per holder {differing}; token logs in non-canonical blocks "
        f"{sorted(orphaned) or 'none'}"
    )


async def balances_from_logs(chain: AnvilChain, token_address: str) -> dict[str, int]:
    """Each holder's balance summed from the token's Transfer logs, read raw from the node."""
    logs = await chain.rpc(
        "eth_getLogs",
        {
            "address": token_address,
            "fromBlock": "0x0",
            "toBlock": "latest",
            "topics": [TRANSFER_TOPIC],
        },
    )
    balances = dict.fromkeys(HOLDERS, 0)
    for log in logs:
        sender, receiver = ("0x" + topic[-40:] for topic in log["topics"][1:3])
        amount = int(log["data"], 16)
        if receiver != ZERO:
            balances[receiver] = balances.get(receiver, 0) + amount
        if sender != ZERO:
            balances[sender] = balances.get(sender, 0) - amount
    return {holder: balances[holder] for holder in HOLDERS}


@pytest.mark.parametrize("depth", [1, 10])
async def test_reorg_under_load_leaves_the_view_equal_to_a_fresh_reindex(
    anvil_chain: AnvilChain, depth: int
) -> None:
    async def reorg() -> None:
        await anvil_chain.rpc("anvil_reorg", depth, [])

    await run_under_load(anvil_chain, reorg, reach=depth)


async def test_revert_to_a_snapshot_then_other_blocks_under_load(anvil_chain: AnvilChain) -> None:
    async def revert() -> None:
        snapshot = await anvil_chain.rpc("evm_snapshot")
        at_snapshot = await anvil_chain.head()
        # Blocks on top of the snapshot for the indexer to read before they are orphaned: the
        # load is held, and the pipelined anchorer has no backlog left by now, so give it one,
        # and wait until its batch is indexed (however slow the machine).
        await asyncio.to_thread(add_records, anvil_chain.session_factory, customers=1, each=3)

        async def indexed_after_snapshot() -> bool:
            newest = await asyncio.to_thread(newest_indexed_block, anvil_chain.session_factory)
            return newest is not None and newest > at_snapshot

        await wait_for_async(
            indexed_after_snapshot, what="an event mined after the snapshot to be indexed"
        )
        assert await anvil_chain.rpc("evm_revert", snapshot) is True
        # Other blocks at the same heights: the ones built since the snapshot are orphaned.
        await anvil_chain.mine(2)

    await run_under_load(anvil_chain, revert, reach=None)


async def test_a_reorg_deeper_than_the_confirmations_is_still_rolled_back(
    anvil_chain: AnvilChain,
) -> None:
    async def deep() -> None:
        await anvil_chain.rpc("anvil_reorg", 8, [])

    # Blocks head-7 .. head are replaced, of which the indexer has read up to head-3.
    await run_under_load(anvil_chain, deep, reach=8 - 3, confirmations=3)
