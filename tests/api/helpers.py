"""Request factories and database checks shared by the API tests."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.db.models import Base


def interaction(customer: str, /, **overrides: Any) -> dict[str, Any]:
    """A valid interaction request body."""
    body: dict[str, Any] = {
        "customer_id": customer,
        "type": "support_call",
        "channel": "phone",
        "occurred_at": "2026-11-25T10:00:00Z",
        "details": {"topic": "billing", "minutes": 12},
    }
    body.update(overrides)
    return body


def order(customer: str, /, **overrides: Any) -> dict[str, Any]:
    """A valid order request body (2 x 10.50 + 1 x 4.00 = 25.00 EUR)."""
    body: dict[str, Any] = {
        "customer_id": customer,
        "order_number": "SO-1001",
        "lines": [
            {"sku": "TEA-1", "quantity": 2, "unit_price": "10.50"},
            {"sku": "MUG-2", "quantity": 1, "unit_price": "4"},
        ],
        "total": "25.00",
        "currency": "EUR",
        "status": "paid",
    }
    body.update(overrides)
    return body


def count(session_factory: sessionmaker[Session], model: type[Base]) -> int:
    """Rows in `model`'s table."""
    with session_factory() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def problem(response: Any, status: int) -> dict[str, Any]:
    """The problem document of `response`, after checking its status and media type."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert {"type", "title", "detail"} <= body.keys()
    return body


def answered_as(model: type[BaseModel], response: Any, status: int = 200) -> dict[str, Any]:
    """The JSON body of `response`, after checking its status and that `model` (the route's
    `response_model`) describes it field for field: no field the model lacks, none it has
    missing or of another type; a field the answer leaves out must be optional in the model."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    described = model.model_validate(body).model_dump(mode="json", exclude_unset=True)
    assert described == body, f"{model.__name__} does not describe the answer"
    return body


def fields(body: dict[str, Any]) -> set[str]:
    """The field paths a validation problem names."""
    return {error["field"] for error in body["errors"]}


def checked_out_at_dispose(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that gets, each time `engine` is disposed, how many of its connections were still
    checked out: one returned after the dispose goes back to a pool nobody closes any more."""
    counts: list[int] = []
    dispose = engine.dispose

    def counting_dispose(close: bool = True) -> None:
        counts.append(engine.pool.checkedout())  # type: ignore[attr-defined]
        dispose(close)

    monkeypatch.setattr(engine, "dispose", counting_dispose)
    return counts
