"""Running jobs through the group committer as one group, and seeing the statements it runs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.api.group_commit import GroupCommitter

Job = Callable[[Session], Any]


def run_group(session_factory: sessionmaker[Session], jobs: list[Job]) -> list[Any]:
    """Each job's value, or its exception, after the committer ran them as one group."""
    committer = GroupCommitter(session_factory)
    group = [(job, Future[Any]()) for job in jobs]
    committer._commit_group(group)
    outcomes: list[Any] = []
    for _, future in group:
        error = future.exception(timeout=10)
        outcomes.append(error if error is not None else future.result())
    return outcomes


@pytest.fixture
def statements(session_factory: sessionmaker[Session]) -> Iterator[list[str]]:
    """Every statement the engine runs from now on (PostgreSQL's COPY goes around it)."""
    seen: list[str] = []
    engine = session_factory.kw["bind"]

    def record(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        seen.append(" ".join(statement.split()))

    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)
