"""Ids in paths are checked before a handler runs: a non-UUID id is a clear 422, not a 404.

Exports: `check_path_ids`, `check_ids_of`, `PATH_IDS`.

`api.install` adds `check_path_ids` to the routes of a router whose paths hold ids
(`check_ids_of`), not to the whole router: a dependency costs every request it runs on, and
the busiest writes (`POST /v1/interactions`) have no id in their path. A body field with a
bad id already answers 422 naming the field; a path id now does the same, naming the path
parameter (never echoing the value, which may be anything a caller typed).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.routing import APIRoute

from crm_ledger.api.deps import BearerCredentials, get_current_key
from crm_ledger.errors import Unprocessable
from crm_ledger.journal.schemas import is_public_id

#: Path parameters that hold the service's public ids (UUIDs).
PATH_IDS = frozenset(
    {"customer_id", "record_id", "campaign_id", "job_id", "redemption_id", "report_id"}
)


async def check_path_ids(request: Request, credentials: BearerCredentials) -> None:
    """Raise `Unprocessable` naming each path id that is not a UUID, once the caller is
    authenticated (a caller without a key learns nothing but 401)."""
    errors = [
        {
            "location": "path",
            "field": name,
            "message": f"{name} in the path must be an id such as "
            "0192f1c4-6a4e-7c3a-9b1e-2f6d1a0b9c8d (a UUID, as the service returned it)",
        }
        for name, value in request.path_params.items()
        if name in PATH_IDS and not is_public_id(str(value))
    ]
    if errors:
        await get_current_key(request, credentials)
        raise Unprocessable("; ".join(error["message"] for error in errors), errors=errors)


def check_ids_of(router: APIRouter) -> APIRouter:
    """`router`, with `check_path_ids` added to each of its routes whose path holds an id of
    `PATH_IDS` (before it is included: the app builds its routes from their dependencies).

    Once per route, however many apps include the router: the routers are module-level, and
    an app made in the same process again (every test's app, `create_app` twice) used to add
    another copy each time, so that a route carried as many checks as apps had been made
    and every request and every new app's first build of its routes walked them all."""
    for route in router.routes:
        if (
            isinstance(route, APIRoute)
            and PATH_IDS & route.param_convertors.keys()
            and not any(depends.dependency is check_path_ids for depends in route.dependencies)
        ):
            route.dependencies.append(Depends(check_path_ids))
    return router
