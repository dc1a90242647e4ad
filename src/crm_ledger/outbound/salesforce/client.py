"""Salesforce over httpx: the OAuth 2.0 JWT bearer flow and the Bulk API 2.0 ingest protocol.

Exports: `JwtBearerAuth`, `BulkClient`, `JobInfo`, `JobState`, `ResultRow`, `TOKEN_PATH`.

The JWT bearer flow: an RS256 JWT with `iss` (the connected app's consumer key), `sub` (the
user), `aud` (the login host) and `exp` (at most 3 minutes ahead) is posted to
`<login host>/services/oauth2/token` as `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`;
the answer names the access token and the org's `instance_url`.

An ingest job: create it (POST `jobs/ingest`, state Open), upload its CSV once (PUT
`jobs/ingest/<id>/batches`), close it (PATCH state UploadComplete), poll it (GET; InProgress →
JobComplete or Failed), then read `successfulResults/` (`sf__Id`, `sf__Created`, the row) and
`failedResults/` (`sf__Id`, `sf__Error`, the row). Transport errors, 5xx and 429 raise
`SalesforceUnavailable` (retry later); any other refusal `SalesforceError` with Salesforce's
`errorCode: message`. The access token is never part of a message.
"""

from __future__ import annotations

import csv
import enum
import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from crm_ledger.errors import SalesforceError, SalesforceUnavailable

__all__ = ["TOKEN_PATH", "BulkClient", "JobInfo", "JobState", "JwtBearerAuth", "ResultRow"]

TOKEN_PATH = "/services/oauth2/token"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: Salesforce accepts an assertion that expires at most 3 minutes ahead.
_ASSERTION_LIFETIME_SECONDS = 170


class JobState(enum.StrEnum):
    """The states of a Bulk API 2.0 ingest job."""

    OPEN = "Open"
    UPLOAD_COMPLETE = "UploadComplete"
    IN_PROGRESS = "InProgress"
    JOB_COMPLETE = "JobComplete"
    FAILED = "Failed"
    ABORTED = "Aborted"


@dataclass(frozen=True, slots=True)
class JobInfo:
    """What GET on a job says: its state, rows processed and failed, and why it failed."""

    id: str
    state: JobState
    processed: int
    failed: int
    error_message: str | None


@dataclass(frozen=True, slots=True)
class ResultRow:
    """One row of a job's results: the record's id, the error (failed rows) and the row sent."""

    salesforce_id: str | None
    error: str | None
    created: bool
    fields: dict[str, str]


@dataclass(frozen=True, slots=True)
class _Token:
    access_token: str
    instance_url: str


class JwtBearerAuth:
    """Access tokens by the OAuth 2.0 JWT bearer flow, cached until Salesforce refuses one."""

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        login_url: str,
        client_id: str,
        username: str,
        private_key_pem: bytes,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._http = http
        self._login_url = login_url.rstrip("/")
        self._client_id = client_id
        self._username = username
        self._private_key_pem = private_key_pem
        self._clock = clock
        self._token: _Token | None = None

    def assertion(self) -> str:
        """A fresh signed JWT for the token request."""
        claims = {
            "iss": self._client_id,
            "sub": self._username,
            "aud": self._login_url,
            "exp": int(self._clock()) + _ASSERTION_LIFETIME_SECONDS,
        }
        return jwt.encode(claims, self._private_key_pem, algorithm="RS256")

    async def token(self) -> _Token:
        """The cached token, or a new one from the token endpoint."""
        if self._token is None:
            self._token = await self._request_token()
        return self._token

    def forget(self) -> None:
        """Drop the cached token (Salesforce said it expired)."""
        self._token = None

    async def _request_token(self) -> _Token:
        try:
            response = await self._http.post(
                self._login_url + TOKEN_PATH,
                data={"grant_type": JWT_BEARER_GRANT, "assertion": self.assertion()},
            )
        except httpx.TransportError as exc:
            raise SalesforceUnavailable(
                f"cannot reach the Salesforce login host {self._login_url}: {type(exc).__name__}"
            ) from None
        if response.status_code >= 500 or response.status_code == 429:
            raise SalesforceUnavailable(
                f"the Salesforce login host answered {response.status_code}; retrying later"
            )
        body = _json(response)
        if response.status_code != 200 or not isinstance(body, dict):
            error = body.get("error") if isinstance(body, dict) else None
            description = body.get("error_description") if isinstance(body, dict) else None
            raise SalesforceError(
                f"Salesforce refused the JWT bearer login ({response.status_code} {error}: "
                f"{description}); check CRM_LEDGER_SALESFORCE_CLIENT_ID, _USERNAME, the "
                "certificate in the connected app and that the user is pre-authorized"
            )
        token, instance = body.get("access_token"), body.get("instance_url")
        if not isinstance(token, str) or not isinstance(instance, str):
            raise SalesforceError("the Salesforce token answer has no access_token/instance_url")
        return _Token(access_token=token, instance_url=instance.rstrip("/"))


class BulkClient:
    """The Bulk API 2.0 ingest calls; every call logs in again once if the session expired."""

    def __init__(self, *, http: httpx.AsyncClient, auth: JwtBearerAuth, api_version: str):
        self._http = http
        self.auth = auth
        self._api_version = api_version

    async def create_upsert_job(self, *, object_name: str, external_id_field: str) -> str:
        """Create an upsert job for CSV with LF line endings; its id."""
        body = await self._call(
            "POST",
            "jobs/ingest",
            json={
                "object": object_name,
                "externalIdFieldName": external_id_field,
                "contentType": "CSV",
                "operation": "upsert",
                "lineEnding": "LF",
            },
        )
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            raise SalesforceError("Salesforce created a job but its answer has no id")
        return str(body["id"])

    async def upload(self, job_id: str, data: bytes) -> None:
        """Upload the job's CSV (once per job)."""
        await self._call(
            "PUT",
            f"jobs/ingest/{job_id}/batches",
            content=data,
            headers={"Content-Type": "text/csv"},
        )

    async def close(self, job_id: str) -> None:
        """Mark the upload complete: Salesforce queues the job."""
        await self._call("PATCH", f"jobs/ingest/{job_id}", json={"state": "UploadComplete"})

    async def abort(self, job_id: str) -> None:
        """Abort a job that is not complete."""
        await self._call("PATCH", f"jobs/ingest/{job_id}", json={"state": "Aborted"})

    async def job_info(self, job_id: str) -> JobInfo:
        """The job's state and counts."""
        body = await self._call("GET", f"jobs/ingest/{job_id}")
        if not isinstance(body, dict):
            raise SalesforceError(f"Salesforce answered no job information for job {job_id}")
        try:
            state = JobState(str(body.get("state")))
        except ValueError:
            raise SalesforceError(
                f"job {job_id} is in an unknown state {body.get('state')!r}"
            ) from None
        return JobInfo(
            id=job_id,
            state=state,
            processed=int(body.get("numberRecordsProcessed") or 0),
            failed=int(body.get("numberRecordsFailed") or 0),
            error_message=body.get("errorMessage") or None,
        )

    async def successful_results(self, job_id: str) -> list[ResultRow]:
        """The rows Salesforce applied."""
        return await self._results(job_id, "successfulResults")

    async def failed_results(self, job_id: str) -> list[ResultRow]:
        """The rows Salesforce refused, each with its `sf__Error`."""
        return await self._results(job_id, "failedResults")

    async def _results(self, job_id: str, kind: str) -> list[ResultRow]:
        text = await self._call("GET", f"jobs/ingest/{job_id}/{kind}/", expect_csv=True)
        assert isinstance(text, str)
        rows = []
        for row in csv.DictReader(io.StringIO(text)):
            salesforce_id = row.pop("sf__Id", "") or None
            error = row.pop("sf__Error", None)
            created = row.pop("sf__Created", "").lower() == "true"
            rows.append(ResultRow(salesforce_id, error, created, dict(row)))
        return rows

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        expect_csv: bool = False,
    ) -> Any:
        for attempt in range(2):
            token = await self.auth.token()
            url = f"{token.instance_url}/services/data/{self._api_version}/{path}"
            try:
                response = await self._http.request(
                    method,
                    url,
                    json=json,
                    content=content,
                    headers={"Authorization": f"Bearer {token.access_token}", **(headers or {})},
                )
            except httpx.TransportError as exc:
                raise SalesforceUnavailable(
                    f"cannot reach Salesforce at {token.instance_url} ({method} {path}): "
                    f"{type(exc).__name__}"
                ) from None
            if response.status_code == 401 and attempt == 0:
                self.auth.forget()
                continue
            if response.status_code >= 500 or response.status_code == 429:
                raise SalesforceUnavailable(
                    f"Salesforce answered {response.status_code} to {method} {path}; retrying later"
                )
            if response.status_code >= 400:
                raise SalesforceError(
                    f"Salesforce refused {method} {path} ({response.status_code}): "
                    + _errors(response)
                )
            if expect_csv:
                return response.text
            return _json(response) if response.content else None
        raise SalesforceError(f"Salesforce refused a fresh session for {method} {path}")


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _errors(response: httpx.Response) -> str:
    """Salesforce's `[{"errorCode", "message"}]`, as one line."""
    body = _json(response)
    if isinstance(body, list):
        parts = [
            f"{item.get('errorCode')}: {item.get('message')}"
            for item in body
            if isinstance(item, dict)
        ]
        if parts:
            return "; ".join(parts)
    return response.text[:300] or response.reason_phrase
