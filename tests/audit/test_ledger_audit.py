"""The ledger audit against a fake chain: clean when untouched, and, for every way of tampering
with the database behind the service's back, exactly the affected seqs and nothing else."""

from __future__ import annotations

import copy
import hashlib
import hmac
import secrets
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.audit.ledger import run_ledger_audit
from crm_ledger.audit.report import DiscrepancyKind as Kind
from crm_ledger.audit.report import LedgerReport
from crm_ledger.ledger import merkle
from crm_ledger.ledger.leaf import LeafInput, RecordKind
from crm_ledger.verifier.chain import EMPTY_CODE_HASH, BatchAnchoredEvent
from tests.anchoring.fakes import FakeChain
from tests.audit.fakes import FakeAuditChain, build_ledger, row, seqs_of, tamper

pytestmark = pytest.mark.asyncio

# build_ledger: customers c0, c1, c2 with 4 records each, interleaved: c0 has seqs 0, 3, 6, 9;
# c1 has 1, 4, 7, 10; c2 has 2, 5, 8, 11. Batches of 4: 0-3, 4-7, 8-11.


async def audit(engine: Engine, chain: FakeChain) -> LedgerReport:
    return await run_ledger_audit(engine=engine, chain=FakeAuditChain(chain))


@pytest_asyncio.fixture
async def chain(session_factory: sessionmaker[Session], tmp_path: Path) -> FakeChain:
    chain = FakeChain()
    await build_ledger(session_factory, chain, tmp_path)
    return chain


def assert_names(report: LedgerReport, seqs: set[int], kinds: set[Kind]) -> None:
    """The report accuses exactly `seqs`, with findings of exactly `kinds`."""
    assert report.affected_seqs() == seqs, report.to_json()
    assert report.kinds() == kinds, report.to_json()


async def test_an_untouched_ledger_audits_clean(
    engine: Engine, session_factory: sessionmaker[Session], chain: FakeChain
) -> None:
    assert seqs_of(session_factory, "c1") == [1, 4, 7, 10]
    report = await audit(engine, chain)
    assert report.clean, report.to_json()
    assert report.records_checked == 12
    assert report.batches_checked == 3
    assert report.chain["batch_count"] == 3
    assert report.chain["head"] == "0x" + chain.head.hex()


async def test_altered_content_names_its_seq(
    engine: Engine, database_url: str, chain: FakeChain
) -> None:
    content = row(database_url, "SELECT content FROM records WHERE seq = 5").content
    altered = bytes(content).replace(b'"type":"n1"', b'"type":"n9"')
    tamper(database_url, [("UPDATE records SET content = :c WHERE seq = 5", {"c": altered})])
    assert_names(await audit(engine, chain), {5}, {Kind.COMMITMENT_MISMATCH})


async def test_content_recommitted_with_the_stored_key_names_its_seq(
    engine: Engine, database_url: str, chain: FakeChain
) -> None:
    found = row(
        database_url,
        "SELECT r.content, c.key FROM records r JOIN customers c ON c.pk = r.customer_pk "
        "WHERE r.seq = 6",
    )
    altered = bytes(found.content).replace(b'"type":"n2"', b'"type":"refund"')
    recommitted = hmac.digest(bytes(found.key), altered, "sha256")
    tamper(
        database_url,
        [
            (
                "UPDATE records SET content = :c, commitment = :m WHERE seq = 6",
                {"c": altered, "m": recommitted},
            )
        ],
    )
    assert_names(await audit(engine, chain), {6}, {Kind.LEAF_MISMATCH})


@pytest.mark.parametrize("seq", [4, 10], ids=["middle of a customer's chain", "customer's last"])
async def test_a_consistent_rewrite_names_the_rewritten_seq(
    engine: Engine, database_url: str, chain: FakeChain, seq: int
) -> None:
    # Content, commitment and leaf hash all recomputed: the row is self-consistent, only the
    # chain (and the next link, or the customer's tail) still remembers the anchored leaf.
    found = row(
        database_url,
        "SELECT r.content, r.previous_leaf_hash, c.key FROM records r "
        "JOIN customers c ON c.pk = r.customer_pk WHERE r.seq = :seq",
        seq=seq,
    )
    altered = bytes(found.content).replace(b'"type":"n', b'"type":"forged-n')
    recommitted = hmac.digest(bytes(found.key), altered, "sha256")
    leaf = LeafInput(
        seq=seq,
        kind=RecordKind.INTERACTION,
        commitment=recommitted,
        previous_leaf_hash=bytes(found.previous_leaf_hash),
    ).leaf_hash()
    tamper(
        database_url,
        [
            (
                "UPDATE records SET content = :c, commitment = :m, leaf_hash = :l WHERE seq = :s",
                {"c": altered, "m": recommitted, "l": leaf, "s": seq},
            )
        ],
    )
    assert_names(await audit(engine, chain), {seq}, {Kind.LEAF_REWRITTEN})


async def test_an_altered_customer_key_names_every_seq_of_that_customer(
    engine: Engine, database_url: str, chain: FakeChain
) -> None:
    tamper(
        database_url,
        [
            (
                "UPDATE customers SET key = :k WHERE external_ref = 'c1'",
                {"k": secrets.token_bytes(32)},
            )
        ],
    )
    assert_names(await audit(engine, chain), {1, 4, 7, 10}, {Kind.COMMITMENT_MISMATCH})


async def test_swapped_customer_keys_name_every_seq_of_both_customers(
    engine: Engine, database_url: str, chain: FakeChain
) -> None:
    key0 = bytes(row(database_url, "SELECT key FROM customers WHERE external_ref = 'c0'").key)
    key2 = bytes(row(database_url, "SELECT key FROM customers WHERE external_ref = 'c2'").key)
    tamper(
        database_url,
        [
            ("UPDATE customers SET key = :k WHERE external_ref = 'c0'", {"k": key2}),
            ("UPDATE customers SET key = :k WHERE external_ref = 'c2'", {"k": key0}),
        ],
    )
    assert_names(await audit(engine, chain), {0, 3, 6, 9, 2, 5, 8, 11}, {Kind.COMMITMENT_MISMATCH})


async def test_a_deleted_key_names_every_seq_of_that_customer(
    engine: Engine, database_url: str, chain: FakeChain
) -> None:
    tamper(database_url, [("UPDATE customers SET key = NULL WHERE external_ref = 'c2'", {})])
    assert_names(await audit(engine, chain), {2, 5, 8, 11}, {Kind.KEY_MISSING})


@pytest.mark.parametrize(
    "seq", [0, 5, 9, 11], ids=["first", "middle", "customer's last", "ledger's last"]
)
async def test_a_deleted_record_names_its_seq(
    engine: Engine, database_url: str, chain: FakeChain, seq: int
) -> None:
    tamper(database_url, [("DELETE FROM records WHERE seq = :s", {"s": seq})])
    assert_names(await audit(engine, chain), {seq}, {Kind.DELETED_RECORD})


async def test_several_deleted_records_are_each_named(
    engine: Engine, database_url: str, chain: FakeChain
) -> None:
    tamper(database_url, [("DELETE FROM records WHERE seq IN (3, 4, 7)", {})])
    assert_names(await audit(engine, chain), {3, 4, 7}, {Kind.DELETED_RECORD})


async def test_an_inserted_record_names_its_seq(
    engine: Engine, database_url: str, chain: FakeChain
) -> None:
    # A well-formed record for c0, chained to c0's last leaf, claiming the last batch.
    c0 = row(
        database_url, "SELECT pk, id, key, last_leaf_hash FROM customers WHERE external_ref = 'c0'"
    )
    content = (
        b'{"body":{"type":"forged"},"customer_id":"%s","id":"%s","kind":"interaction",'
        % (
            c0.id.encode(),
            b"00000000-0000-4000-8000-000000000001",
        )
        + b'"recorded_at":"2026-01-01T00:00:00Z","v":1}'
    )
    commitment = hmac.digest(bytes(c0.key), content, "sha256")
    leaf = LeafInput(
        seq=12,
        kind=RecordKind.INTERACTION,
        commitment=commitment,
        previous_leaf_hash=bytes(c0.last_leaf_hash),
    ).leaf_hash()
    tamper(
        database_url,
        [
            (
                "INSERT INTO records (id, customer_pk, kind, content, commitment, created_at, "
                "seq, previous_leaf_hash, leaf_hash, batch_id) VALUES "
                "(:id, :customer, 1, :content, :commitment, :now, 12, :previous, :leaf, 2)",
                {
                    "id": "00000000-0000-4000-8000-000000000001",
                    "customer": c0.pk,
                    "content": content,
                    "commitment": commitment,
                    "now": "2026-01-01 00:00:00",
                    "previous": bytes(c0.last_leaf_hash),
                    "leaf": leaf,
                },
            )
        ],
    )
    assert_names(await audit(engine, chain), {12}, {Kind.INSERTED_RECORD})


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("root", hashlib.sha256(b"forged root").digest()),
        ("head", hashlib.sha256(b"forged head").digest()),
        ("count", 3),
    ],
)
async def test_an_altered_batch_row_names_the_batch_and_no_record(
    engine: Engine, database_url: str, chain: FakeChain, column: str, value: object
) -> None:
    tamper(database_url, [(f"UPDATE batches SET {column} = :v WHERE id = 1", {"v": value})])
    report = await audit(engine, chain)
    assert_names(report, set(), {Kind.BATCH_ROW_ALTERED})
    assert {d.batch_id for d in report.discrepancies} == {1}
    assert column in report.discrepancies[0].detail


async def test_a_batch_on_chain_unknown_to_the_database_names_its_seqs(
    engine: Engine, chain: FakeChain
) -> None:
    # Someone with the anchorer's key anchored seqs the journal never had.
    await chain.send_anchor(12, 3, hashlib.sha256(b"not ours").digest())
    report = await audit(engine, chain)
    assert_names(report, {12, 13, 14}, {Kind.UNKNOWN_BATCH})
    assert report.discrepancies[0].batch_id == 3


async def test_a_chain_reset_is_one_finding_and_accuses_no_record(
    engine: Engine, chain: FakeChain
) -> None:
    chain.code_hash_value = EMPTY_CODE_HASH
    report = await audit(engine, chain)
    assert_names(report, set(), {Kind.CHAIN_RESET})
    assert "reset" in report.discrepancies[0].detail
    assert "crm-ledger chain recover" in report.discrepancies[0].detail


async def test_a_chain_rolled_back_names_the_batches_it_lost(
    engine: Engine, chain: FakeChain
) -> None:
    chain.roll_back_to(2)
    report = await audit(engine, chain)
    assert_names(report, set(), {Kind.BATCH_NOT_ON_CHAIN})
    assert {d.batch_id for d in report.discrepancies} == {2}


async def test_an_altered_leaf_hash_names_its_seq(
    engine: Engine, database_url: str, chain: FakeChain
) -> None:
    tamper(
        database_url,
        [("UPDATE records SET leaf_hash = :l WHERE seq = 7", {"l": merkle.ZERO_HASH})],
    )
    report = await audit(engine, chain)
    # Record 7's row is inconsistent, and c1's next record (10) still links to the true leaf:
    # only 7 is accused.
    assert report.affected_seqs() == {7}, report.to_json()


class _LandsAfterTheRead(FakeAuditChain):
    """The chain as the audit read it (without the last batch), while `batch(id)` answers from
    the chain as it is by the time the audit reaches the journal's rows: the anchorer sent the
    last batch in between."""

    def __init__(self, read: FakeChain, now: FakeChain) -> None:
        super().__init__(read)
        self.now = FakeAuditChain(now)

    async def batch(self, batch_id: int) -> BatchAnchoredEvent | None:
        return await self.now.batch(batch_id)


class _LandsDuringTheRead(FakeAuditChain):
    """The last batch reaches the chain while the audit is reading it (after its events)."""

    def __init__(self, fake: FakeChain, landing: BatchAnchoredEvent) -> None:
        super().__init__(fake)
        self.landing: BatchAnchoredEvent | None = landing

    async def head(self) -> bytes:
        if self.landing is not None:
            self.fake.events.append(self.landing)
            self.landing = None
        return await super().head()


async def test_a_batch_anchored_after_the_chain_was_read_is_no_finding(
    engine: Engine, chain: FakeChain
) -> None:
    as_read = copy.deepcopy(chain)
    as_read.roll_back_to(2)
    report = await run_ledger_audit(engine=engine, chain=_LandsAfterTheRead(as_read, chain))
    assert report.clean, report.to_json()
    assert report.records_checked == 12 and report.batches_checked == 3


async def test_a_batch_anchored_while_the_chain_is_read_is_read_again(
    engine: Engine, chain: FakeChain
) -> None:
    landing = chain.events.pop()
    report = await run_ledger_audit(engine=engine, chain=_LandsDuringTheRead(chain, landing))
    assert report.clean, report.to_json()
    assert report.chain["batch_count"] == 3


async def test_a_batch_the_chain_holds_otherwise_after_the_read_is_still_named(
    engine: Engine, chain: FakeChain
) -> None:
    as_read = copy.deepcopy(chain)
    as_read.roll_back_to(2)
    now = copy.deepcopy(as_read)
    await now.send_anchor(8, 4, hashlib.sha256(b"another root").digest())
    report = await run_ledger_audit(engine=engine, chain=_LandsAfterTheRead(as_read, now))
    assert {d.batch_id for d in report.discrepancies if d.kind is Kind.BATCH_NOT_ON_CHAIN} == {2}
