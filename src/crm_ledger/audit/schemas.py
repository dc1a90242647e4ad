"""The JSON shapes of the audit API's answers, for `response_model=` and the OpenAPI document
(pydantic only).

Exports: `CheckStepPublic`, `RecordCheckPublic`, `RecordFindingPublic`, `CustomerAuditPublic`,
`LedgerAuditPublic`, `DigestCheckPublic`.

Each describes what the audit's own `to_json()` answers, field for field; fields that answer
leaves out when empty are optional here (tests/audit/test_api.py checks every answer against
its model).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class CheckStepPublic(BaseModel):
    """One check of a record's verification and how it went."""

    name: str = Field(description="which step of docs/ledger-format.md section 7")
    status: Literal["ok", "failed", "skipped"]
    detail: str


class RecordCheckPublic(BaseModel):
    """The verdict on one receipt (docs/ledger-format.md section 7) and every step to it."""

    record_id: str
    verdict: Literal["valid", "invalid", "incomplete"] = Field(
        description="`valid`: no step failed and the chain could be asked; `incomplete`: "
        "nothing failed but a step was skipped (no content or no key)"
    )
    content_checked: bool
    steps: list[CheckStepPublic]


class RecordFindingPublic(BaseModel):
    """One record of the customer (or one that is gone) and what the audit found."""

    status: Literal["ok", "pending", "tampered", "missing", "erased"]
    record_id: str | None
    seq: int | None
    kind: str | None
    batch_id: int | None
    problems: list[str] | None = Field(default=None, description="present when tampered")
    detail: str | None = None


class CustomerAuditPublic(BaseModel):
    """Every record of one customer checked from content to the root on chain."""

    customer_id: str
    verdict: Literal["ok", "tampered"]
    erased: bool
    counts: dict[str, int] = Field(description="how many records have each status")
    problems: list[str]
    records: list[RecordFindingPublic]


class LedgerAuditPublic(BaseModel):
    """A stored ledger audit run: `running`, `failed` (with the error) or `done` (with the
    report)."""

    id: str
    status: Literal["running", "done", "failed"]
    started_at: str
    finished_at: str | None
    clean: bool | None
    records_checked: int
    discrepancy_count: int
    error: str | None
    report: dict[str, Any] | None = Field(
        description="once done: the report `crm-ledger audit --json` prints (batches, records, "
        "each discrepancy)"
    )


class DigestCheckPublic(BaseModel):
    """Whether the ledger on chain extends a saved digest, as `crm-ledger verify --since`."""

    extends: bool
    failures: list[str]
    notes: list[str]
    batches_added: int
    records_added: int
    head: str | None = Field(description="the ledger's head now, 0x-hex")
