"""The domain raises `RequestError`s in its own words; the API alone knows their HTTP statuses."""

from __future__ import annotations

import importlib
import pkgutil

import crm_ledger
from crm_ledger.api.problems import PROBLEM_KINDS, problem_kind
from crm_ledger.errors import NotFound, RequestError, TooManyRequests


def _all_request_errors() -> set[type[RequestError]]:
    for module in pkgutil.walk_packages(crm_ledger.__path__, "crm_ledger."):
        if ".migrations." not in module.name:
            importlib.import_module(module.name)
    found: set[type[RequestError]] = set()
    todo: list[type[RequestError]] = [RequestError]
    while todo:
        kind = todo.pop()
        found.add(kind)
        todo.extend(kind.__subclasses__())
    return found - {RequestError}


def test_every_kind_of_request_error_answers_a_4xx_or_503_never_a_500() -> None:
    kinds = _all_request_errors()
    assert len(kinds) >= len(PROBLEM_KINDS)
    for kind in kinds:
        status, title = problem_kind(kind)
        assert 400 <= status < 500 or status == 503, kind
        assert title, kind


def test_no_error_carries_an_http_status_of_its_own() -> None:
    for kind in _all_request_errors():
        for attribute in ("status", "status_code", "title"):
            assert attribute not in vars(kind), (
                f"{kind.__module__}.{kind.__name__} sets `{attribute}`: the API's "
                "PROBLEM_KINDS maps errors to statuses, the domain names what went wrong"
            )


def test_a_subclass_answers_as_its_nearest_listed_kind() -> None:
    class UnknownCampaign(NotFound):
        pass

    assert problem_kind(UnknownCampaign) == (404, "Not found")
    assert problem_kind(TooManyRequests)[0] == 429
