"""Personal data on the read path: who sees it, and the trace each read leaves.

Exports: `PurposeDep`, `sees_personal_data`, `journal_reads`, `PURPOSE_HEADER`,
`ERASED_REPLAY`, `SEALED_DATA_UNAVAILABLE`, `PERSONAL_READ_ERRORS`.

Roles listed in the `personal_data_roles` setting (recorder, auditor and admin by default) see
customers' personal fields; the others (marketing by default) get the same answers with those
fields null, and leave no access record. Every answer that shows personal fields is preceded by
its access records, committed through the group committer (so concurrent reads share one
commit): no personal field leaves the service without a durable trace of who read it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import Depends, Header
from pydantic import AfterValidator
from pydantic_core import PydanticCustomError
from sqlalchemy.orm import Session

from crm_ledger.api.group_commit import committer_for
from crm_ledger.api.problems import Problem
from crm_ledger.config import Settings
from crm_ledger.errors import Conflict
from crm_ledger.journal.access import access_body
from crm_ledger.journal.keys import ApiKeyPrincipal
from crm_ledger.journal.records import record_accesses

PURPOSE_HEADER = "X-Purpose"
_PURPOSE = re.compile(r"[\x20-\x7e]{1,200}")
#: The 503 of an endpoint that opens sealed data when the master key configured does not open it.
SEALED_DATA_UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {
        "model": Problem,
        "content": {"application/problem+json": {}},
        "description": "The configured master key does not open this database's personal data.",
    }
}
#: What a read that shows personal fields may answer besides the usual.
PERSONAL_READ_ERRORS: dict[int | str, dict[str, Any]] = {
    409: {
        "model": Problem,
        "content": {"application/problem+json": {}},
        "description": "A customer shown was erased while being read; read again.",
    },
    **SEALED_DATA_UNAVAILABLE,
}
#: The 410 a write whose answer concerns customers may give when replayed after an erasure.
ERASED_REPLAY: dict[int | str, dict[str, Any]] = {
    410: {
        "model": Problem,
        "content": {"application/problem+json": {}},
        "description": "A replay (same Idempotency-Key) of a request whose stored answer was "
        "erased with a customer it concerned; the request is not carried out again.",
    },
    **SEALED_DATA_UNAVAILABLE,
}


def _check_purpose(value: str | None) -> str | None:
    if value is not None and not _PURPOSE.fullmatch(value):
        raise PydanticCustomError(
            "purpose", "must be 1 to 200 printable ASCII characters, e.g. 'support ticket 4711'"
        )
    return value


async def get_purpose(
    purpose: Annotated[
        str | None,
        AfterValidator(_check_purpose),
        Header(
            alias=PURPOSE_HEADER,
            description="Why personal data is read (1 to 200 printable ASCII characters); "
            "journaled in the customer's access log.",
        ),
    ] = None,
) -> str | None:
    """The declared purpose of a read, if any."""
    return purpose


PurposeDep = Annotated[str | None, Depends(get_purpose)]


def sees_personal_data(settings: Settings, principal: ApiKeyPrincipal) -> bool:
    """True when the caller's role is one the settings let see personal fields."""
    roles = {role.strip() for role in settings.personal_data_roles.split(",")}
    return principal.role.value in roles


def journal_reads(
    *,
    session: Session,
    principal: ApiKeyPrincipal,
    customer_ids: Sequence[str],
    purpose: str | None,
    operation: str,
) -> None:
    """Commit one access record per customer whose personal fields are about to be shown;
    returns after the commit.

    Raises `Conflict` when one of them was erased since it was read (it has no key to commit
    with any more): the answer holding their fields must not go out.
    """
    wanted = {customer_id.lower() for customer_id in customer_ids}
    if not wanted:
        return
    body = access_body(principal=principal, purpose=purpose, operation=operation)

    def write(tx: Session) -> None:
        written = record_accesses(session=tx, customer_ids=sorted(wanted), body=body)
        if written != len(wanted):
            raise Conflict(
                "a customer's personal data was erased while it was being read; read again"
            )

    committer_for(session).run(write)
