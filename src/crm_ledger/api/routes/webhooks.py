"""/v1/webhooks/{platform}/{source_id}: where shops post their webhooks.

No API key (a shop cannot send one): each delivery is authenticated by the platform's own
signature over the raw body (`ingest.signatures`), stored durably, and answered 200 before it
is mapped (`ingest.inbox`, `ingest.worker`). WooCommerce's ping when a webhook is saved is
answered 200 and stored nowhere.

The handler runs on the event loop and crosses into no worker thread on the usual path: the
source's keys come from the app's `SourceKeyCache`, the signature and the JSON check run
inline (bodies over `_INLINE_BODY_BYTES` in a thread), and the insert is handed to the group
committer, whose commit is awaited. The insert's transaction first checks that the source is
still the one the cached keys came from (`sources.still_current`); when it is not (deleted or
rotated meanwhile, by any process) nothing is stored and the delivery is verified again with
keys read afresh. The deliveries a group commits together are checked with one query and
inserted with one statement (`_Store`). A WooCommerce ping stores nothing, so it is always
checked with fresh keys.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from crm_ledger.api.deps import RuntimeDep, SessionDep
from crm_ledger.api.group_commit import committer_for
from crm_ledger.api.idempotency import json_response
from crm_ledger.api.problems import Problem
from crm_ledger.api.transaction import read_only
from crm_ledger.db.models import utcnow
from crm_ledger.errors import NotFound, TryLater, Unauthorized
from crm_ledger.ingest import inbox
from crm_ledger.ingest.schemas import WebhookAccepted
from crm_ledger.ingest.signatures import Platform
from crm_ledger.ingest.sources import SourceKeyCache, VerifyingKeys, still_current, verifying_keys

router = APIRouter(tags=["webhooks"])

WEBHOOK_PATH = "/v1/webhooks/{platform}/{source_id}"
#: The worker that maps what this endpoint stores (`crm_ledger.ingest.worker.IngestWorker`).
INGEST_WORKER = "ingest"
#: Bodies up to this size are verified and parsed on the event loop (well under a millisecond).
_INLINE_BODY_BYTES = 64 * 1024
#: How many times a delivery is verified again because its source changed while it was stored.
_ATTEMPTS = 3

_PROBLEM: dict[str, Any] = {"model": Problem, "content": {"application/problem+json": {}}}


@router.post(
    WEBHOOK_PATH,
    response_model=WebhookAccepted,
    responses={
        200: {"description": "Stored (or already stored), or a ping"},
        400: {**_PROBLEM, "description": "The signed body is not a JSON object"},
        401: {**_PROBLEM, "description": "Missing or wrong signature: nothing stored"},
        404: {**_PROBLEM, "description": "No such source (or deleted, or another platform)"},
        413: {**_PROBLEM, "description": "Body over CRM_LEDGER_MAX_WEBHOOK_BODY_BYTES"},
        503: {**_PROBLEM, "description": "The source kept changing while storing: send again"},
    },
    summary="Receive a shop's webhook (signed by the platform; no API key)",
)
async def receive_webhook(
    platform: str,
    source_id: str,
    request: Request,
    session: SessionDep,
    runtime: RuntimeDep,
) -> Response:
    """Verify the platform's signature over the raw body, store it, answer 200."""
    if platform not in Platform.__members__.values():
        names = ", ".join(p.value for p in Platform)
        raise NotFound(f"no platform {platform[:32]!r}: webhook URLs name one of {names}")
    body = await request.body()
    headers = {name.lower(): value for name, value in request.headers.items()}
    delivery = _Delivery(session, source_key_cache(request.app), platform, source_id)
    answer = await delivery.accept(headers, body)
    if answer.delivery_id is not None and not answer.duplicate:
        runtime.supervisor.wake(INGEST_WORKER)
    return json_response(answer)


def source_key_cache(app: FastAPI) -> SourceKeyCache:
    """The app's cache of sources' verifying keys (made on first use)."""
    cache = getattr(app.state, "source_key_cache", None)
    if cache is None:
        cache = app.state.source_key_cache = SourceKeyCache()
    assert isinstance(cache, SourceKeyCache)
    return cache


class _Stored(enum.Enum):
    NOW = "now"
    ALREADY = "already"
    SOURCE_CHANGED = "source changed"


class _Delivery:
    """One delivery to one source: verified, then stored durably (see the module docstring)."""

    def __init__(
        self, session: Session, cache: SourceKeyCache, platform: str, source_id: str
    ) -> None:
        self.session = session
        self.cache = cache
        self.platform = platform
        # The cache is keyed by the id as the URL spells it; lookups accept any case.
        self.source_id = source_id

    async def accept(self, headers: dict[str, str], body: bytes) -> WebhookAccepted:
        """Committed when this returns (or a ping, or a delivery id already stored)."""
        keys = self.cache.get(self.platform, self.source_id)
        fresh = keys is None
        for _ in range(_ATTEMPTS):
            if keys is None:
                keys = await self._read_keys()
                fresh = True
            try:
                checked = await _check(keys, headers, body)
            except Unauthorized:
                if fresh:
                    raise
                # The shop may sign with a secret rotated in since these keys were cached.
                keys = None
                continue
            if checked is None:
                if not fresh:
                    # A ping stores nothing, so no transaction would notice a deleted source.
                    keys = None
                    continue
                return WebhookAccepted(accepted=True, duplicate=False, delivery_id=None)
            outcome = await self._store(keys, checked, body)
            if outcome is not _Stored.SOURCE_CHANGED:
                return WebhookAccepted(
                    accepted=True,
                    duplicate=outcome is _Stored.ALREADY,
                    delivery_id=checked.delivery_id,
                )
            keys = None  # the source changed since its keys were read: read them again
        raise TryLater(
            "the source was changed (rotated or deleted) while this delivery was being "
            "stored; nothing was stored: send it again"
        )

    async def _read_keys(self) -> VerifyingKeys:
        self.cache.forget(self.platform, self.source_id)
        keys = await run_in_threadpool(self._read_keys_blocking)
        self.cache.put(self.platform, self.source_id, keys)
        return keys

    def _read_keys_blocking(self) -> VerifyingKeys:
        with read_only(self.session):
            return verifying_keys(
                session=self.session, platform=self.platform, source_id=self.source_id
            )

    async def _store(self, keys: VerifyingKeys, checked: inbox.Checked, body: bytes) -> _Stored:
        """Insert the delivery, committed, unless its source changed since `keys` were read
        or the delivery id is stored already."""
        row = inbox.pending_row(
            source_pk=checked.source_pk,
            delivery_id=checked.delivery_id,
            topic=checked.topic,
            body=body,
        )
        try:
            return await committer_for(self.session).run_async(_Store(keys, row))
        except IntegrityError:
            # Stored already (a retry, or two identical deliveries raced: the unique
            # constraint let one through); `_known` tells that from a real error.
            if await self._known(checked):
                return _Stored.ALREADY
            raise

    async def _known(self, checked: inbox.Checked) -> bool:
        def known() -> bool:
            with read_only(self.session):
                stored = inbox.stored_delivery_ids(
                    self.session, checked.source_pk, [checked.delivery_id]
                )
            return bool(stored)

        return await run_in_threadpool(known)


@dataclass(frozen=True, slots=True)
class _Store:
    """One delivery's insert: alone, or with the other deliveries of its group in one check
    of their sources and one multi-row INSERT (`api.group_commit.Combinable`)."""

    keys: VerifyingKeys
    row: dict[str, Any]

    def __call__(self, tx: Session) -> _Stored:
        return _Store.bulk(tx, [self])[0]

    @staticmethod
    def bulk(tx: Session, stores: list[_Store]) -> list[_Stored]:
        """Insert the deliveries whose source is unchanged since their keys were read; a
        delivery id stored already raises `IntegrityError` (alone, it is that delivery's)."""
        current = still_current(tx, [store.keys for store in stores])
        inbox.insert_deliveries(tx, [s.row for s, ok in zip(stores, current, strict=True) if ok])
        return [_Stored.NOW if ok else _Stored.SOURCE_CHANGED for ok in current]


async def _check(keys: VerifyingKeys, headers: dict[str, str], body: bytes) -> inbox.Checked | None:
    now = utcnow()
    if len(body) <= _INLINE_BODY_BYTES:
        return inbox.check_delivery(keys=keys, headers=headers, body=body, now=now)
    return await run_in_threadpool(
        lambda: inbox.check_delivery(keys=keys, headers=headers, body=body, now=now)
    )
