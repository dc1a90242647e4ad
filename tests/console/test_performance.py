"""Opt-in (CRM_LEDGER_CONSOLE_PERF=1): the customer list over 100,000 customers and a customer
with 10,000 records render in the browser in under a second, paged. Not part of `make test`:
seeding takes a while. Prints the figures docs/benchmarks.md records; like every test here it
asserts no timing (the machine is shared), only that each page rendered its rows.
"""

from __future__ import annotations

import os
import statistics
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from playwright.sync_api import Page
from sqlalchemy import insert
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.db.models import Customer, Record
from crm_ledger.journal.keys import Role
from crm_ledger.ledger.canonical import canonical_json, commitment, new_customer_key
from crm_ledger.ledger.leaf import RecordKind
from tests.console.conftest import LiveService

pytestmark = pytest.mark.skipif(
    os.environ.get("CRM_LEDGER_CONSOLE_PERF") != "1",
    reason="opt-in: CRM_LEDGER_CONSOLE_PERF=1 (seeds 100,000 customers and 10,000 records)",
)

CUSTOMERS = 100_000
RECORDS = 10_000
RUNS = 5
BUDGET_MS = 1000


def seed(session_factory: sessionmaker[Session]) -> str:
    """100,000 customers; the last one has 10,000 interactions. Returns its id."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with session_factory.begin() as session:
        for first in range(0, CUSTOMERS, 10_000):
            session.execute(
                insert(Customer),
                [
                    {
                        "id": str(uuid.uuid4()),
                        "name": f"Customer {i:06d}",
                        "email": f"c{i}@example.com",
                        "tags": ["vip"] if i % 10 == 0 else [],
                        "key": new_customer_key(),
                        "created_at": start + timedelta(seconds=i),
                    }
                    for i in range(first, first + 10_000)
                ],
            )
        busy = Customer(name="Busy Customer", email="busy@example.com", key=new_customer_key())
        session.add(busy)
        session.flush()
        assert busy.key is not None
        rows = []
        for n in range(RECORDS):
            record_id = str(uuid.uuid4())
            content = canonical_json(
                {
                    "v": 1,
                    "id": record_id,
                    "customer_id": busy.id,
                    "kind": "interaction",
                    "recorded_at": (start + timedelta(minutes=n)).isoformat(),
                    "body": {"type": "support_call", "n": n},
                }
            )
            rows.append(
                {
                    "id": record_id,
                    "customer_pk": busy.pk,
                    "kind": int(RecordKind.INTERACTION),
                    "content": content,
                    "commitment": commitment(busy.key, content),
                    "created_at": start + timedelta(minutes=n),
                }
            )
        session.execute(insert(Record), rows)
        return busy.id


MEASURE = """([url, ready]) => new Promise((resolve) => {
  const started = performance.now();
  location.hash = url;
  const look = () => document.querySelector(ready)
    ? requestAnimationFrame(() => resolve(performance.now() - started))
    : requestAnimationFrame(look);
  look();
})"""


def timed(page: Page, url: str, ready: str) -> float:
    """Milliseconds, measured in the page, from navigating to `url` until `ready` is painted."""
    elapsed: float = page.evaluate(MEASURE, [url, ready])
    return elapsed


def test_large_lists_render_in_under_a_second(
    app: FastAPI, page: Page, session_factory: sessionmaker[Session], database_url: str
) -> None:
    busy = seed(session_factory)
    with LiveService(app) as service:
        key = service.key(Role.AUDITOR)
        page.goto(service.url + "/#/signin")
        page.get_by_label("API key").fill(key)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_selector("#results table")
        figures: dict[str, Any] = {}
        for name, url, ready in (
            ("customer list, first page of 50", "#/customers?sort=name", "#results tbody tr"),
            ("customer list, tag filter", "#/customers?tag=vip", "#results tbody tr"),
            ("customer 360, 10,000 records", f"#/customer/{busy}", "#timeline tbody tr"),
        ):
            runs = []
            for _ in range(RUNS):
                page.evaluate("location.hash = '#/ops'")
                page.wait_for_selector("#ops")
                runs.append(timed(page, url, ready))
            figures[name] = (statistics.median(runs), max(runs))
        page.evaluate("location.hash = '#/customers?sort=name'")
        page.get_by_role("button", name="Next").click()
        page.wait_for_selector("text=Page 2")
        page.wait_for_selector("text=Customer 000050")
    db = database_url.split(":", 1)[0]
    for name, (median, worst) in figures.items():
        verdict = "under" if worst < BUDGET_MS else "OVER"
        print(
            f"{db}: {name}: median {median:.0f} ms, worst {worst:.0f} ms of {RUNS} ({verdict} 1 s)"
        )
