"""The API's routers, one module per resource, and `add_actions`: the bodiless POSTs that move a
resource from one state to another (pause, resume, close), registered alike."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel


def add_actions(
    router: APIRouter,
    path: str,
    actions: Mapping[str, Callable[..., Any]],
    *,
    noun: str,
    roles: str,
    response_model: type[BaseModel],
    responses: dict[int | str, dict[str, Any]],
) -> None:
    """`POST {path}/{action}` for each handler of `actions` (its docstring describes it),
    answering `response_model`; summary "Pause a campaign (marketing, admin)", name
    `pause_campaign`."""
    for action, handler in actions.items():
        router.add_api_route(
            f"{path}/{action}",
            handler,
            methods=["POST"],
            response_model=response_model,
            responses=responses,
            summary=f"{action.capitalize()} a {noun} ({roles})",
            name=f"{action}_{noun.replace(' ', '_')}",
        )
