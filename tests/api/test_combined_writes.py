"""Combined single writes: the group committer writes the single record writes of a group in
one bulk write, yet each caller gets exactly what it would have got alone, and the journal
holds exactly the rows the one-by-one path writes."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import delete, event, select, update
from sqlalchemy.orm import Session, sessionmaker
from starlette.responses import Response

from crm_ledger.anchoring.batches import cut_batch
from crm_ledger.api.idempotency import REPLAY_HEADER, Idempotency, Written, _WritePlan
from crm_ledger.api.routes.records import RecordWrite
from crm_ledger.db.models import Batch, Customer, Record, new_id
from crm_ledger.errors import Conflict, Gone, IdempotencyConflict, NotFound, Unprocessable
from crm_ledger.journal import records
from crm_ledger.journal.erasure import erase_customer
from crm_ledger.journal.keys import ApiKeyPrincipal, Role, create_api_key, lookup
from crm_ledger.journal.schemas import InteractionCreate, OrderCreate
from crm_ledger.ledger.leaf import RecordKind
from tests.anchoring.fakes import make_customer
from tests.api.helpers import interaction, order
from tests.committing import Job, run_group

Payload = InteractionCreate | OrderCreate


def lookups(seen: list[str]) -> int:
    """The record writers' customer lookups among `seen`."""
    return sum(s.startswith("SELECT customers.id, customers.pk, customers.") for s in seen)


def new_customers(session_factory: sessionmaker[Session], count: int) -> list[str]:
    with session_factory.begin() as session:
        return [make_customer(session, name=f"c{n}").id for n in range(count)]


def journal(session_factory: sessionmaker[Session]) -> dict[str, tuple[Any, ...]]:
    """Every record row by id: customer, kind, content, commitment, time, seq, leaf hash."""
    with session_factory() as session:
        return {
            r.id: (
                r.customer_pk,
                r.kind,
                bytes(r.content),
                bytes(r.commitment),
                r.created_at,
                r.seq,
                r.leaf_hash,
            )
            for r in session.scalars(select(Record).order_by(Record.pk))
        }


def assert_answers(
    session_factory: sessionmaker[Session], payloads: list[Payload], outcomes: list[Any]
) -> None:
    """Each outcome (a write's `Written`, or an idempotent write's body) is the answer for its
    own payload, and its record is in the journal."""
    for payload, written in zip(payloads, outcomes, strict=True):
        if isinstance(written, Written):
            assert written.customer_ids == [payload.customer_id]
            written = written.body
        assert isinstance(written, str), written
        answer = json.loads(written)
        assert answer["customer_id"] == payload.customer_id
        assert answer["kind"] == ("order" if isinstance(payload, OrderCreate) else "interaction")
        assert answer["content"] == payload.model_dump(mode="json", exclude={"customer_id"})
        with session_factory() as session:
            view = records.get_record(session=session, record_id=answer["id"])
        assert view.document == answer["document"]


def test_a_group_of_good_writes_is_one_bulk_write_and_each_gets_its_own_answer(
    session_factory: sessionmaker[Session], statements: list[str]
) -> None:
    (existing,) = new_customers(session_factory, 1)
    fresh = new_id()

    def create_fresh(session: Session) -> str:  # not combinable: runs alone, first
        return make_customer(session, id=fresh, name="fresh").id

    payloads: list[Payload] = [
        InteractionCreate(**interaction(fresh, details={"n": 1})),  # created in this group
        OrderCreate(**order(existing)),
        InteractionCreate(**interaction(existing, details={"n": 2})),  # the same customer again
        InteractionCreate(**interaction(fresh, details={"n": 3})),
    ]
    outcomes = run_group(session_factory, [create_fresh, *[RecordWrite(p) for p in payloads]])
    assert outcomes[0] == fresh
    assert lookups(statements) == 1, "one customer lookup for the four writes"
    assert not any(s.startswith("SAVEPOINT") for s in statements)
    assert_answers(session_factory, payloads, outcomes[1:])
    assert len(journal(session_factory)) == 4


def test_in_a_group_with_bad_writes_each_gets_its_own_error_and_the_good_ones_commit(
    session_factory: sessionmaker[Session],
) -> None:
    ada, bob = new_customers(session_factory, 2)
    with session_factory.begin() as session:
        erased = make_customer(session, key=None, name=None, email=None).id
    good: list[Payload] = [
        InteractionCreate(**interaction(ada)),
        OrderCreate(**order(bob)),
        InteractionCreate(**interaction(bob, details={"n": 2})),
    ]
    jobs = [
        RecordWrite(good[0]),
        RecordWrite(InteractionCreate(**interaction(new_id()))),  # no such customer
        RecordWrite(good[1]),
        RecordWrite(InteractionCreate(**interaction(erased))),
        RecordWrite(OrderCreate(**order(ada, total="26.00"))),  # the lines add up to 25.00
        RecordWrite(good[2]),
    ]
    outcomes = run_group(session_factory, list(jobs))
    assert isinstance(outcomes[1], NotFound)
    assert isinstance(outcomes[3], Conflict)
    assert isinstance(outcomes[4], Unprocessable)
    assert_answers(session_factory, good, [outcomes[0], outcomes[2], outcomes[5]])
    assert len(journal(session_factory)) == 3


def test_a_combined_group_whose_commit_fails_runs_each_write_alone(
    session_factory: sessionmaker[Session],
) -> None:
    ada, bob = new_customers(session_factory, 2)
    commits: list[int] = []

    def fail_first_commits(session: Session) -> None:
        if session.in_nested_transaction():
            return
        commits.append(1)
        if len(commits) <= 2:
            raise RuntimeError("disk full")

    event.listen(session_factory, "before_commit", fail_first_commits)
    try:
        payloads: list[Payload] = [
            InteractionCreate(**interaction(ada, details={"n": n})) for n in range(3)
        ]
        payloads.append(OrderCreate(**order(bob)))
        outcomes = run_group(session_factory, [RecordWrite(p) for p in payloads])
    finally:
        event.remove(session_factory, "before_commit", fail_first_commits)
    # The combined commit, the one with savepoints, then one per write: each written once.
    assert len(commits) == 2 + len(payloads)
    assert_answers(session_factory, payloads, outcomes)
    assert len(journal(session_factory)) == len(payloads)


def test_the_combined_path_writes_byte_for_byte_what_the_one_by_one_path_writes(
    session_factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same ids and clock on both sides: the same rows (content, commitment, time), the same
    answers, and after the anchorer's cut the same seqs and leaf hashes (so the same
    receipts)."""
    ids = new_customers(session_factory, 3)
    details = [
        {"note": 'quote " backslash \\ tab \t newline \n control \x01', "n": -7},
        {"ü": "żółć 🎉", "é": ["\u2028", "\u007f", {"z": 1, "a": [True, None]}]},
        {},
    ]
    payloads: list[Payload] = [
        InteractionCreate(**interaction(ids[n % 3], details=details[n % 3])) for n in range(7)
    ]
    payloads.insert(2, OrderCreate(**order(ids[1])))
    payloads.insert(5, OrderCreate(**order(ids[0], order_number="SO-ü\u2028")))
    monkeypatch.setattr(records, "utcnow", lambda: datetime(2026, 12, 8, 9, 30, 1, 123456, UTC))

    def write(combined: bool) -> tuple[list[Any], dict[str, tuple[Any, ...]]]:
        counter = itertools.count()
        monkeypatch.setattr(
            records,
            "new_ids",
            lambda n: [f"00000000-0000-4000-8000-{next(counter):012d}" for _ in range(n)],
        )
        if combined:
            jobs: list[Job] = [RecordWrite(p) for p in payloads]
            outcomes = run_group(session_factory, jobs)
        else:  # each alone, one group (and one commit) per write, in the same order
            outcomes = [run_group(session_factory, [RecordWrite(p).__call__])[0] for p in payloads]
        assert cut_batch(session_factory, max_records=100) is not None
        rows = journal(session_factory)
        with session_factory.begin() as session:  # back to an empty journal
            session.execute(delete(Record))
            session.execute(delete(Batch))
            session.execute(update(Customer).values(last_leaf_hash=None))
        return outcomes, rows

    combined_answers, combined_rows = write(combined=True)
    alone_answers, alone_rows = write(combined=False)
    assert len(combined_rows) == len(payloads)
    assert list(combined_rows.items()) == list(alone_rows.items())
    assert combined_answers == alone_answers


@pytest.fixture
def principal(session_factory: sessionmaker[Session]) -> ApiKeyPrincipal:
    with session_factory.begin() as session:
        found = lookup(session, create_api_key(session, role=Role.RECORDER, label="combined"))
    assert found is not None
    return found


def test_idempotent_writes_combine_and_keep_replay_conflict_and_erased_replay(
    session_factory: sessionmaker[Session], principal: ApiKeyPrincipal, statements: list[str]
) -> None:
    ada, bob = new_customers(session_factory, 2)

    def plan(key: str | None, payload: Payload) -> _WritePlan:
        return _WritePlan(
            session_factory,
            principal,
            Idempotency(key=key, method="POST", path="/v1/interactions"),
            payload,
            201,
            RecordWrite(payload),
        )

    first = InteractionCreate(**interaction(ada, details={"n": 1}))
    second = InteractionCreate(**interaction(bob, details={"n": 2}))
    # A concurrent retry in the same group: the combined run stores k1 twice, so the group
    # runs again one by one and the retry replays the first's answer.
    outcomes = run_group(
        session_factory,
        [plan("k1", first), plan("k2", second), plan(None, second), plan("k1", first)],
    )
    assert isinstance(outcomes[3], Response)
    assert outcomes[3].headers[REPLAY_HEADER] == "true"
    assert outcomes[3].body.decode() == outcomes[0]
    assert len({json.loads(o)["id"] for o in outcomes[:3]}) == 3
    assert len(journal(session_factory)) == 3

    statements.clear()
    third = InteractionCreate(**interaction(bob, details={"n": 3}))
    outcomes = run_group(
        session_factory,
        [plan("k1", first), plan("k3", third), plan(None, third), plan("k4", third)],
    )
    assert not any(s.startswith("SAVEPOINT") for s in statements), "no write failed"
    assert lookups(statements) == 1, "the three new writes were one bulk write"
    entries = [
        s
        for s in statements
        if s.startswith("INSERT INTO idempotency ")
        or (s.startswith("SELECT idempotency.") and " FROM idempotency WHERE" in s)
    ]
    assert len(entries) == 2, "one lookup of the four keys, one insert of the two new answers"
    assert isinstance(outcomes[0], Response) and outcomes[0].headers[REPLAY_HEADER] == "true"
    assert len(journal(session_factory)) == 6

    changed = InteractionCreate(**interaction(ada, details={"n": "changed"}))
    with session_factory.begin() as session:
        erase_customer(session=session, customer_id=bob)
    outcomes = run_group(
        session_factory,
        [plan("k1", changed), plan("k2", second), plan("k5", first), plan(None, first)],
    )
    assert isinstance(outcomes[0], IdempotencyConflict)
    assert isinstance(outcomes[1], Gone)  # its customer's answer was erased with them
    assert_answers(session_factory, [first, first], outcomes[2:])
    with session_factory() as session:
        kinds = list(session.scalars(select(Record.kind)))
    assert kinds.count(int(RecordKind.INTERACTION)) == 8
