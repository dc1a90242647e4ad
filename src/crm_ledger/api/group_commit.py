"""Group commit: concurrent API writes share one transaction and one durable commit.

Exports: `GroupCommitter`, `Combinable`, `committer_for`, `committer_of`, `close_committers`.

A 2xx on a write means the record is committed, so every write waits for a commit, and with
SQLite at `synchronous=FULL` a commit is an fsync. One writer thread per database (on
PostgreSQL `POSTGRESQL_WRITERS`, whose groups run side by side) takes every write queued while
its previous commit was in progress, runs each in a SAVEPOINT of its own
(one failing write rolls back only itself), commits once, and only then answers each caller.
The savepoints are only taken when needed: a group is first run without them, and only if one of
its writes fails is it run again with them.
Each caller still gets exactly the outcome it would have had alone: its result after a
successful commit, or its own exception. If the shared commit itself fails, each write of the
group is run again alone, so one bad write cannot fail the others. So is the group when a write
fails because the database did (disk full, connection lost): SQLite then rolls back the whole
transaction, the savepoints of the writes before it included, so no write of the group may be
answered from it.

Consecutive jobs of a group that are `Combinable` with the same bulk function are run as one
bulk call (one customer lookup and one multi-row INSERT for a group of single record writes,
as the batch endpoint writes), in the first run only: if anything fails there, the careful
path runs each job alone, so a combined write still gets exactly the outcome it would have
had alone.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar

from sqlalchemy import Engine, event
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger import metrics
from crm_ledger.api.transaction import transaction

log = logging.getLogger(__name__)

T = TypeVar("T")
#: Upper bound on writes sharing one commit (keeps one transaction's lock hold short).
MAX_GROUP = 256
#: Writer threads per PostgreSQL database: while one group waits for its commit (a WAL flush),
#: the next runs its statements on another connection, and PostgreSQL flushes concurrent
#: commits together. SQLite has one write lock, so one thread (a second would only queue).
POSTGRESQL_WRITERS = 4

_Work = Callable[[Session], Any]
#: A queued job and who waits for it: a thread's future, or an event loop's (`run_async`).
_Job = tuple[_Work, "Future[Any] | asyncio.Future[Any]"]
#: (True, value) or (False, exception).
_Outcome = tuple[bool, Any]


class Combinable(Protocol):
    """A job that can share one bulk call with the jobs of the same `bulk` queued next to it.

    Alone, the committer runs it as `job(session)`. Combined, it runs `bulk(session, jobs)`
    once for consecutive jobs whose `bulk` *is* the same function (a plain function, not a
    bound method): one value per job, in order, each the value `job(session)` would have
    given, and the same rows written. If it raises, nothing of the group is kept and each job
    runs alone.
    """

    @property
    def bulk(self) -> Callable[[Session, list[Any]], Sequence[Any]] | None: ...

    def __call__(self, session: Session) -> Any: ...


class GroupCommitter:
    """Writer threads for one database (`writers`, one by default); `run(job)` blocks until
    `job` is committed, `submit(job)` returns a future of it, `await run_async(job)` waits for
    it on an event loop. Each thread takes whatever is queued when it is free, so with
    several, groups are run and committed side by side."""

    def __init__(self, session_factory: sessionmaker[Session], *, writers: int = 1) -> None:
        self._session_factory = session_factory
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._loop, name=f"group-commit-{n}", daemon=True)
            for n in range(writers)
        ]
        self._started = False
        self._start_lock = threading.Lock()

    def run(self, job: Callable[[Session], T]) -> T:
        """Run `job(session)` inside a shared transaction; returns after the commit."""
        return self.submit(job).result()

    def submit(self, job: Callable[[Session], T]) -> Future[T]:
        """Queue `job(session)`; the future resolves after the commit (or with its error)."""
        future: Future[T] = Future()
        self._ensure_started()
        self._queue.put((job, future))
        return future

    async def run_async(self, job: Callable[[Session], T]) -> T:
        """`run` for an event loop: awaits the commit with no thread of its own waiting. The
        callers of one loop in one group are answered with one wake-up of the loop."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._ensure_started()
        self._queue.put((job, future))
        return await future

    def close(self) -> None:
        """Finish queued writes, then stop the threads (each stops at the first None it takes,
        after everything queued before it)."""
        if self._started:
            for _ in self._threads:
                self._queue.put(None)
            for thread in self._threads:
                thread.join(timeout=30)

    def _ensure_started(self) -> None:
        if not self._started:
            with self._start_lock:
                if not self._started:
                    for thread in self._threads:
                        thread.start()
                    self._started = True

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            stop = False
            while len(group) < MAX_GROUP:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                group.append(nxt)
            try:
                self._commit_group(group)
            except Exception as exc:  # a bug here must not end the thread with callers waiting
                log.exception("group commit of %d writes failed unexpectedly", len(group))
                _reply(group, [(False, exc)] * len(group))
            if stop:
                return

    def _commit_group(self, group: list[_Job]) -> None:
        """Run and commit `group`, then answer each of its callers."""
        jobs = [job for job, _ in group]
        outcomes = self._commit_without_savepoints(jobs)
        if outcomes is None:
            outcomes = self._commit_with_savepoints(jobs)
        _reply(group, outcomes)

    def _commit_without_savepoints(self, jobs: list[_Work]) -> list[_Outcome] | None:
        """Run the whole group in one transaction with no savepoints: the usual case, where
        every write succeeds, costs no SAVEPOINT/RELEASE pair per write (two round trips each
        on PostgreSQL). If any write or the commit fails, nothing of the group is committed
        and None sends it down the careful path (`_commit_with_savepoints`), where each write
        gets exactly the outcome it would have had alone."""
        try:
            with self._session_factory() as session, transaction(session):
                values = _run_combined(session, jobs)
        except Exception:
            log.debug("a group of %d writes failed without savepoints", len(jobs), exc_info=True)
            return None
        metrics.group_commit_size.observe(len(jobs))
        return [(True, value) for value in values]

    def _commit_with_savepoints(self, jobs: list[_Work]) -> list[_Outcome]:
        outcomes: list[_Outcome] = []
        try:
            with self._session_factory() as session, transaction(session):
                for job in jobs:
                    try:
                        with session.begin_nested():
                            value = job(session)
                    except (OperationalError, InterfaceError):
                        raise  # the database failed, not the write: run each write alone
                    except Exception as exc:
                        outcomes.append((False, exc))
                    else:
                        outcomes.append((True, value))
        except Exception:
            if len(jobs) == 1:
                log.debug("single write failed at commit", exc_info=True)
            else:
                log.warning("group commit of %d writes failed; running each alone", len(jobs))
            return [self._run_alone(job) for job in jobs]
        metrics.group_commit_size.observe(len(jobs))
        return outcomes

    def _run_alone(self, job: _Work) -> _Outcome:
        try:
            with self._session_factory() as session, transaction(session):
                return True, job(session)
        except Exception as exc:
            return False, exc


def _bulk_of(job: _Work) -> Any:
    return getattr(job, "bulk", None)


def _run_combined(session: Session, jobs: list[_Work]) -> list[Any]:
    """Each job's value: runs of `Combinable` jobs with the same bulk function as one call,
    the others (and a run of one) alone."""
    values: list[Any] = []
    first = 0
    while first < len(jobs):
        bulk = _bulk_of(jobs[first])
        end = first + 1
        if bulk is not None:
            while end < len(jobs) and _bulk_of(jobs[end]) is bulk:
                end += 1
        if end - first == 1:
            values.append(jobs[first](session))
        else:
            values.extend(_combine(session, jobs[first:end], bulk))  # type: ignore[arg-type]
        first = end
    return values


def _combine(
    session: Session,
    jobs: list[Combinable],
    bulk: Callable[[Session, list[Any]], Sequence[Any]],
) -> Sequence[Any]:
    values = bulk(session, jobs)
    if len(values) != len(jobs):
        raise AssertionError(f"a bulk call answered {len(values)} of {len(jobs)} jobs")
    return values


def _reply(group: list[_Job], outcomes: list[_Outcome]) -> None:
    """Answer each caller of `group`: a thread's future at once, an event loop's callers with
    one wake-up of their loop for the whole group (`call_soon_threadsafe` writes to the loop's
    wake-up pipe each time; once per write cost a system call per write on either side)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], _Outcome]]] = {}
    for (_, waiter), outcome in zip(group, outcomes, strict=True):
        if isinstance(waiter, Future):
            _answer(waiter, outcome[1], failed=not outcome[0])
        else:
            by_loop.setdefault(waiter.get_loop(), []).append((waiter, outcome))
    for loop, replies in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, replies)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            log.debug("%d writes answered to a closed event loop", len(replies))


def _settle(replies: list[tuple[asyncio.Future[Any], _Outcome]]) -> None:
    """On the callers' loop: settle each future still awaited (a caller that gave up cancelled
    its own)."""
    for future, (ok, value) in replies:
        if not future.done():
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)


def _answer(future: Future[Any], value: Any, *, failed: bool = False) -> None:
    """Settle a caller's future, unless the caller gave up on it: a request whose client went
    away cancels the future it awaited (`asyncio.wrap_future` does), and setting a cancelled
    future raises, which would end the writer thread and leave every later write waiting.
    The write itself has run either way (committed or not, as for any other caller)."""
    if future.done() or not (future.running() or future.set_running_or_notify_cancel()):
        return
    if failed:
        future.set_exception(value)
    else:
        future.set_result(value)


# One committer per engine. A committer refers to its engine (its sessions are bound to it), so
# a weak mapping would never let go: each is removed, and its thread stopped, when the engine is
# disposed (or by `close_committers`).
_committers: dict[Engine, GroupCommitter] = {}
_guard = threading.Lock()


def committer_for(session: Session) -> GroupCommitter:
    """The group committer of `session`'s database (created on first use)."""
    engine = session.get_bind()
    assert isinstance(engine, Engine)
    return committer_of(engine)


def committer_of(engine: Engine) -> GroupCommitter:
    """The group committer of `engine` (created on first use)."""
    with _guard:
        committer = _committers.get(engine)
        if committer is None:
            writers = 1 if engine.dialect.name == "sqlite" else POSTGRESQL_WRITERS
            committer = _committers[engine] = GroupCommitter(
                sessionmaker(engine, expire_on_commit=False), writers=writers
            )
            event.listen(engine, "engine_disposed", close_committers)
        return committer


def close_committers(engine: Engine) -> None:
    """Stop the committer of `engine`, if one was started (at shutdown, and when the engine is
    disposed)."""
    with _guard:
        committer = _committers.pop(engine, None)
    if committer is not None:
        committer.close()
