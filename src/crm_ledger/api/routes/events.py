"""/v1/events: the change feed, for downstream CRMs (any role).

Consumers page forward with `after=<cursor>` and save the cursor of the last event they
processed; see `crm_ledger.feed` for the ordering and retention guarantees.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.responses import Response

from crm_ledger import feed
from crm_ledger.api.deps import AnyKey, SessionDep, problem_responses
from crm_ledger.api.idempotency import json_response
from crm_ledger.api.transaction import read_only
from crm_ledger.crm.schemas import FeedEventPublic, FeedPagePublic
from crm_ledger.journal.schemas import format_timestamp

router = APIRouter(tags=["events"])

_ERRORS = problem_responses(401, 410, 422, 429)


@router.get(
    "/v1/events",
    response_model=FeedPagePublic,
    responses=_ERRORS,
    summary="The change feed: ledger events after a cursor (any role)",
)
def events(
    session: SessionDep,
    key: AnyKey,
    after: Annotated[
        str | None,
        Query(
            max_length=64,
            description="the `next_cursor` (or an event's `cursor`) to resume after; leave it "
            "out to start from the oldest event retained",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=feed.MAX_PAGE_SIZE)] = feed.DEFAULT_PAGE_SIZE,
    types: Annotated[
        str | None,
        Query(
            max_length=300,
            description="comma-separated event types to keep: "
            + ", ".join(t.value for t in feed.EventType),
        ),
    ] = None,
) -> Response:
    """Events in the order they happened, at least once: deduplicate on `id`.

    Types: `record.anchored` (the indexer saw the record's batch on chain, confirmed),
    `record.unanchored` (a reorg took that block away; names the event it retracts),
    `reward.issued`, `reward.redeemed`, `reward.expired`, `reward.retracted` (a reorg took a
    reward event's block away), `drift.detected` (reconciliation found a disagreement),
    `subscription.paused` (a webhook subscription was paused after a run of failures).
    A cursor older than the retention answers 410: the consumer missed events.
    """
    wanted = None if types is None else [t.strip() for t in types.split(",") if t.strip()]
    with read_only(session):
        page = feed.read_page(session, after=after, limit=limit, types=wanted)
    body = FeedPagePublic(
        items=[
            FeedEventPublic(
                id=item.id,
                cursor=item.cursor,
                type=item.type,
                created_at=format_timestamp(item.created_at),
                customer_id=item.customer_id,
                data=item.data,
            )
            for item in page.items
        ],
        next_cursor=page.next_cursor,
        has_more=page.has_more,
    )
    return json_response(body)
