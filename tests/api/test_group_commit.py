"""Group commit: writes share commits, yet each gets exactly its own outcome."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger import metrics
from crm_ledger.api.group_commit import (
    POSTGRESQL_WRITERS,
    GroupCommitter,
    close_committers,
    committer_for,
)
from crm_ledger.db.models import Customer
from crm_ledger.db.session import make_session_factory
from crm_ledger.ledger.canonical import new_customer_key


class Refused(Exception):
    pass


def holding(
    entered: threading.Event, release: threading.Event, value: str
) -> Callable[[Session], str]:
    """A job that sets `entered` and holds its group (and the writer) until `release`."""

    def job(session: Session) -> str:
        entered.set()
        release.wait(10)
        return value

    return job


def _samples() -> tuple[float, float]:
    count = total = 0.0
    for metric in metrics.group_commit_size.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count"):
                count = sample.value
            elif sample.name.endswith("_sum"):
                total = sample.value
    return count, total


def test_concurrent_writes_share_commits_and_a_failing_one_rolls_back_alone(
    session_factory: sessionmaker[Session],
) -> None:
    committer = GroupCommitter(session_factory)
    gate = threading.Barrier(16)
    groups_before, writes_before = _samples()

    def write(i: int) -> str:
        def job(session: Session) -> str:
            session.add(Customer(external_ref=f"c{i}", key=new_customer_key()))
            session.flush()
            if i % 5 == 0:
                raise Refused(i)
            return f"ok {i}"

        gate.wait() if i < 16 else None
        return committer.run(job)

    outcomes: dict[int, str | Exception] = {}
    with ThreadPoolExecutor(16) as pool:
        futures = {i: pool.submit(write, i) for i in range(64)}
        for i, future in futures.items():
            try:
                outcomes[i] = future.result()
            except Refused as exc:
                outcomes[i] = exc
    committer.close()

    for i, outcome in outcomes.items():
        if i % 5 == 0:
            assert isinstance(outcome, Refused)
        else:
            assert outcome == f"ok {i}"
    with session_factory() as session:
        names = set(session.scalars(select(Customer.external_ref)))
        assert session.scalar(select(func.count()).select_from(Customer)) == 51
    assert names == {f"c{i}" for i in range(64) if i % 5}
    groups_after, writes_after = _samples()
    assert writes_after - writes_before == 64
    assert groups_after - groups_before < 64  # at least one commit carried several writes


def test_a_failed_shared_commit_runs_each_write_alone(
    session_factory: sessionmaker[Session],
) -> None:
    commits: list[int] = []

    def fail_first_commit(session: Session) -> None:
        if session.in_nested_transaction():
            return  # a savepoint being released, not a commit
        commits.append(1)
        if len(commits) <= 2:
            raise RuntimeError("disk full")

    event.listen(session_factory, "before_commit", fail_first_commit)
    committer = GroupCommitter(session_factory)

    def job_for(name: str) -> Callable[[Session], str]:
        def job(session: Session) -> str:
            session.add(Customer(external_ref=name, key=new_customer_key()))
            return name

        return job

    jobs = [(job_for(name), Future[str]()) for name in ("a", "b", "c")]
    committer._commit_group(jobs)  # one group whose shared commit fails, with savepoints too
    assert [future.result(timeout=5) for _, future in jobs] == ["a", "b", "c"]
    # The failed shared commits (without savepoints, then with them), then one per write.
    assert len(commits) == 5
    with session_factory() as session:
        assert sorted(session.scalars(select(Customer.external_ref))) == ["a", "b", "c"]


def test_with_two_writers_a_group_commits_while_another_is_still_running(
    session_factory: sessionmaker[Session], database_url: str
) -> None:
    """The second writer takes what is queued while the first is busy: here the first group
    cannot finish until the second one has committed (one writer would wait forever)."""
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite has one write lock: its committer has one writer")
    committer = GroupCommitter(session_factory, writers=2)
    first_running, second_committed = threading.Event(), threading.Event()

    def first(session: Session) -> str:
        session.add(Customer(external_ref="first", key=new_customer_key()))
        session.flush()
        first_running.set()
        assert second_committed.wait(30), "the second group never committed beside this one"
        return "first"

    def second(session: Session) -> str:
        session.add(Customer(external_ref="second", key=new_customer_key()))
        return "second"

    try:
        pending = committer.submit(first)
        assert first_running.wait(30)  # its group is formed: what comes next is another group
        assert committer.submit(second).result(timeout=30) == "second"
        with session_factory() as session:  # committed, and visible, before the first group
            assert list(session.scalars(select(Customer.external_ref))) == ["second"]
        second_committed.set()
        assert pending.result(timeout=30) == "first"
    finally:
        second_committed.set()
        committer.close()
    with session_factory() as session:
        assert sorted(session.scalars(select(Customer.external_ref))) == ["first", "second"]


def test_disposing_the_engine_stops_its_committer(engine: Engine) -> None:
    with make_session_factory(engine)() as session:
        committer = committer_for(session)
        assert committer_for(session) is committer
    assert committer.run(lambda s: s.scalar(select(func.count()).select_from(Customer))) == 0
    threads = committer._threads
    assert len(threads) == (1 if engine.dialect.name == "sqlite" else POSTGRESQL_WRITERS)
    assert all(thread.is_alive() for thread in threads)
    engine.dispose()
    for thread in threads:
        thread.join(10)
    assert not any(thread.is_alive() for thread in threads)
    with make_session_factory(engine)() as session:
        assert committer_for(session) is not committer  # a new one, should it be used again
        close_committers(engine)


def test_a_database_failure_mid_group_acknowledges_only_what_is_committed(
    session_factory: sessionmaker[Session], database_url: str
) -> None:
    # SQLite answers a full disk by rolling back the whole transaction: the savepoints of the
    # writes before the failing one go with it. The chaos suite's disk-full run found those
    # writes answered as committed, and the failing one answered "no such savepoint" (500).
    committer = GroupCommitter(session_factory)
    failures: list[int] = []

    def add(name: str) -> Callable[[Session], str]:
        def job(session: Session) -> str:
            session.add(Customer(external_ref=name, key=new_customer_key()))
            session.flush()
            return name

        return job

    def disk_full(session: Session) -> str:
        # Fails in the group's first run (no savepoints) and in its second (savepoints).
        if len(failures) < 2:
            failures.append(1)
            session.connection().exec_driver_sql("ROLLBACK")  # what SQLite does on SQLITE_FULL
            raise OperationalError("INSERT ...", {}, Exception("database or disk is full"))
        return "written alone, after space returned"

    jobs = [add("before"), disk_full, add("after")]
    futures: list[Future[str]] = [Future() for _ in jobs]
    committer._commit_group(list(zip(jobs, futures, strict=True)))
    outcomes = []
    for future in futures:
        try:
            outcomes.append(future.result())
        except OperationalError as exc:
            outcomes.append(f"failed: {exc.orig}")
    with session_factory() as session:
        names = set(session.scalars(select(Customer.external_ref)))
    if database_url.startswith("sqlite"):
        assert outcomes == ["before", "written alone, after space returned", "after"]
    else:
        # PostgreSQL keeps the transaction but refuses everything after the raw ROLLBACK's
        # effect; whatever it answers, an acknowledged write is a committed one.
        assert outcomes[1] == "written alone, after space returned"
    acknowledged = {o for o in outcomes if o in ("before", "after")}
    assert acknowledged <= names, "every write answered as committed is in the database"


def test_a_group_that_succeeds_takes_no_savepoints_and_one_that_fails_does(
    session_factory: sessionmaker[Session],
) -> None:
    statements: list[str] = []
    engine = session_factory.kw["bind"]

    @event.listens_for(engine, "before_cursor_execute")
    def record(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        statements.append(statement.split()[0].upper())

    committer = GroupCommitter(session_factory)

    def add(name: str, *, refuse: bool = False) -> Callable[[Session], str]:
        def job(session: Session) -> str:
            session.add(Customer(external_ref=name, key=new_customer_key()))
            session.flush()
            if refuse:
                raise Refused(name)
            return name

        return job

    good = [(add(name), Future[str]()) for name in ("a", "b", "c")]
    committer._commit_group(good)
    assert [future.result(timeout=5) for _, future in good] == ["a", "b", "c"]
    assert "INSERT" in statements and "SAVEPOINT" not in statements

    mixed = [(add("d"), Future[str]()), (add("e", refuse=True), Future[str]())]
    committer._commit_group(mixed)
    assert mixed[0][1].result(timeout=5) == "d"
    assert isinstance(mixed[1][1].exception(timeout=5), Refused)
    assert "SAVEPOINT" in statements  # the failing write was rolled back alone
    with session_factory() as session:
        assert sorted(session.scalars(select(Customer.external_ref))) == ["a", "b", "c", "d"]


@pytest.mark.parametrize("outcome", ["result", "error"])
def test_a_caller_that_gave_up_does_not_stop_the_committer(
    session_factory: sessionmaker[Session], outcome: str
) -> None:
    """A request whose client went away cancels the future it awaited (`asyncio.wrap_future`
    cancels the concurrent one). The write still runs and commits; answering nobody must not
    kill the writer thread, or every later write would wait for ever."""
    committer = GroupCommitter(session_factory)
    entered, release = threading.Event(), threading.Event()
    blocker = holding(entered, release, "first")

    def abandoned(session: Session) -> str:
        session.add(Customer(external_ref="abandoned", key=new_customer_key()))
        session.flush()
        if outcome == "error":
            raise Refused("nobody listens")
        return "nobody listens"

    first = committer.submit(blocker)
    assert entered.wait(10)
    gone = committer.submit(abandoned)
    assert gone.cancel()  # what wrap_future does when the awaiting task is cancelled
    release.set()
    assert first.result(10) == "first"

    def later(session: Session) -> str:
        session.add(Customer(external_ref="later", key=new_customer_key()))
        session.flush()
        return "later"

    try:
        assert committer.submit(later).result(10) == "later"
    finally:
        committer.close()
    with session_factory() as session:
        names = set(session.scalars(select(Customer.external_ref)))
    assert "later" in names
    assert ("abandoned" in names) is (outcome == "result")


def test_event_loop_callers_of_one_group_are_answered_with_one_wake_up(
    session_factory: sessionmaker[Session],
) -> None:
    """`run_async`: the callers on one loop whose writes shared a commit are settled by one
    `call_soon_threadsafe` (one write to the loop's wake-up pipe, not one per write); a caller
    that gave up does not stop the committer."""
    committer = GroupCommitter(session_factory)
    entered, release = threading.Event(), threading.Event()
    blocker = holding(entered, release, "blocker")

    def add(name: str) -> Callable[[Session], str]:
        def job(session: Session) -> str:
            session.add(Customer(external_ref=name, key=new_customer_key()))
            session.flush()
            if name == "refused":
                raise Refused(name)
            return name

        return job

    async def main() -> tuple[list[object], int]:
        loop = asyncio.get_running_loop()
        wake_ups = 0
        plain = loop.call_soon_threadsafe

        def counted(*args: Any, **kwargs: Any) -> Any:
            nonlocal wake_ups
            wake_ups += 1
            return plain(*args, **kwargs)

        loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
        first = committer.submit(blocker)
        assert await asyncio.to_thread(entered.wait, 10)
        names = ["a", "b", "refused", "c", "gone", "d"]
        tasks = {name: asyncio.create_task(committer.run_async(add(name))) for name in names}
        await asyncio.sleep(0.05)  # every task has queued its job behind the blocker
        tasks["gone"].cancel()
        before = wake_ups
        release.set()
        outcomes = await asyncio.gather(*tasks.values(), return_exceptions=True)
        assert first.result(10) == "blocker"
        later = await committer.run_async(add("later"))
        return [*outcomes, later], wake_ups - before

    try:
        outcomes, wake_ups = asyncio.run(main())
    finally:
        release.set()
        committer.close()
    assert outcomes[:3] == ["a", "b", outcomes[2]] and isinstance(outcomes[2], Refused)
    assert outcomes[3] == "c"
    assert isinstance(outcomes[4], asyncio.CancelledError)
    assert outcomes[5:] == ["d", "later"]
    assert wake_ups == 2, "one for the group of six, one for the later write"
    with session_factory() as session:
        names = set(session.scalars(select(Customer.external_ref)))
    assert names == {"a", "b", "c", "gone", "d", "later"}
