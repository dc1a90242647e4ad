"""The baseline of `scripts/bench_api.py`: FastAPI with the service's request models and nothing
else (no database, no auth, no middleware), run by uvicorn as `bench_api_bare:app`.

Each handler validates the body as the service does and answers 201 with a JSON document of
about the same size as the service's answer; it writes nothing.
"""

from __future__ import annotations

import uuid

from fastapi import FastAPI
from starlette.responses import Response

from crm_ledger.journal.schemas import InteractionBatchCreate, InteractionCreate

app = FastAPI(title="bare baseline")


def _answer(payload: InteractionCreate) -> str:
    return f'{{"id":"{uuid.uuid4()}","body":{payload.model_dump_json()}}}'


@app.post("/v1/interactions", status_code=201)
async def create_interaction(payload: InteractionCreate) -> Response:
    """Validate one interaction and answer as if it were recorded."""
    return Response(_answer(payload), status_code=201, media_type="application/json")


@app.post("/v1/interactions/batch", status_code=201)
async def create_interactions(payload: InteractionBatchCreate) -> Response:
    """Validate a batch and answer as if it were recorded."""
    body = '{"items":[' + ",".join(_answer(item) for item in payload.items) + "]}"
    return Response(body, status_code=201, media_type="application/json")
