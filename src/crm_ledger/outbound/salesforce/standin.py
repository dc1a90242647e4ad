"""A local stand-in for Salesforce: the JWT bearer token endpoint and Bulk API 2.0 ingest jobs.

Exports: `SalesforceStandIn`, `StoredContact`.

It follows the documented protocol closely enough to test the sync without an org: the token
endpoint checks the JWT (RS256 signature against the connected app's certificate key, `iss`,
`sub`, `aud`, `exp` at most 3 minutes ahead) and answers `access_token` + `instance_url`; jobs go
Open → UploadComplete → InProgress → JobComplete (or Failed for an unknown field, Aborted on
request); one CSV upload per job, refused over `max_upload_bytes` (150 MB in Salesforce); an
upsert matches on the external id field, creates a Contact only when `LastName` is given
(`REQUIRED_FIELD_MISSING` otherwise), and reports per-row failures in `failedResults/` with
`sf__Error` as `CODE:message:fields --`. Errors are `[{"errorCode", "message"}]` documents and an
expired or unknown token gets 401 `INVALID_SESSION_ID`.

It is not Salesforce: no sharing rules, triggers, duplicate rules, API limits or field types
beyond a number check on `Loyalty_Balance__c`. `rejections` makes chosen rows fail, `available =
False` makes every call answer 503, `polls_before_complete` how many GETs a job stays in progress.
"""

from __future__ import annotations

import csv
import io
import itertools
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from crm_ledger.outbound.salesforce.client import JWT_BEARER_GRANT, TOKEN_PATH

__all__ = ["SalesforceStandIn", "StoredContact"]

_DEFAULT_FIELDS = frozenset(
    {
        "CRM_Ledger_Id__c",
        "Loyalty_Balance__c",
        "Last_Interaction__c",
        "Ledger_Integrity__c",
        "LastName",
        "FirstName",
        "Email",
    }
)
_MAX_ASSERTION_AHEAD_SECONDS = 180


@dataclass
class StoredContact:
    """A Contact as the stand-in holds it."""

    id: str
    fields: dict[str, str | None]
    #: How many upserts changed or created it.
    writes: int = 0


@dataclass
class _Job:
    id: str
    object: str
    external_id: str
    operation: str
    state: str = "Open"
    data: str | None = None
    polls: int = 0
    processed: int = 0
    failed: int = 0
    error_message: str | None = None
    successes: list[dict[str, str]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    header: list[str] = field(default_factory=list)


class SalesforceStandIn:
    """The stand-in's state and its ASGI app (`.app`)."""

    def __init__(
        self,
        *,
        base_url: str,
        client_id: str,
        username: str,
        public_key_pem: bytes,
        max_upload_bytes: int = 150 * 1024 * 1024,
        polls_before_complete: int = 1,
        fields: frozenset[str] = _DEFAULT_FIELDS,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id
        self.username = username
        self.public_key_pem = public_key_pem
        self.max_upload_bytes = max_upload_bytes
        self.polls_before_complete = polls_before_complete
        self.fields = fields
        self.available = True
        #: External id → the `sf__Error` its rows get.
        self.rejections: dict[str, str] = {}
        self.contacts: dict[str, StoredContact] = {}
        self.jobs: dict[str, _Job] = {}
        self.tokens: set[str] = set()
        #: Every data upload, as (job id, rows in it).
        self.uploads: list[tuple[str, int]] = []
        self._ids = itertools.count(1)
        self.app = Starlette(
            routes=[
                Route(TOKEN_PATH, self._token, methods=["POST"]),
                Route("/services/data/{version}/jobs/ingest", self._create, methods=["POST"]),
                Route(
                    "/services/data/{version}/jobs/ingest/{job_id}",
                    self._job,
                    methods=["GET", "PATCH", "DELETE"],
                ),
                Route(
                    "/services/data/{version}/jobs/ingest/{job_id}/batches",
                    self._upload,
                    methods=["PUT"],
                ),
                Route(
                    "/services/data/{version}/jobs/ingest/{job_id}/{kind}/",
                    self._results,
                    methods=["GET"],
                ),
            ]
        )

    def expire_tokens(self) -> None:
        """Forget every issued token (the next call gets 401 INVALID_SESSION_ID)."""
        self.tokens.clear()

    def _sf_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):015d}"[:18]

    async def _token(self, request: Request) -> Response:
        if not self.available:
            return PlainTextResponse("Service Unavailable", status_code=503)
        form = await request.form()
        if form.get("grant_type") != JWT_BEARER_GRANT:
            return _oauth_error("unsupported_grant_type", "grant type not supported")
        try:
            claims = jwt.decode(
                str(form.get("assertion", "")),
                self.public_key_pem,
                algorithms=["RS256"],
                audience=self.base_url,
                issuer=self.client_id,
                options={"require": ["iss", "sub", "aud", "exp"]},
            )
        except jwt.PyJWTError as exc:
            return _oauth_error("invalid_grant", f"invalid assertion: {type(exc).__name__}")
        if claims["sub"] != self.username:
            return _oauth_error("invalid_grant", "user hasn't approved this consumer")
        if claims["exp"] > time.time() + _MAX_ASSERTION_AHEAD_SECONDS:
            return _oauth_error("invalid_grant", "expiration is too far in the future")
        token = secrets.token_urlsafe(24)
        self.tokens.add(token)
        return JSONResponse(
            {
                "access_token": token,
                "instance_url": self.base_url,
                "id": f"{self.base_url}/id/00D000000000001/005000000000001",
                "token_type": "Bearer",
                "scope": "api",
            }
        )

    def _refusal(self, request: Request) -> Response | None:
        if not self.available:
            return PlainTextResponse("Service Unavailable", status_code=503)
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer ") or header[7:] not in self.tokens:
            return _sf_error(401, "INVALID_SESSION_ID", "Session expired or invalid")
        return None

    async def _create(self, request: Request) -> Response:
        if (refusal := self._refusal(request)) is not None:
            return refusal
        body = await request.json()
        if body.get("operation") != "upsert" or not body.get("externalIdFieldName"):
            return _sf_error(
                400, "INVALIDJOB", "the stand-in takes upsert jobs with an external id"
            )
        if body.get("contentType", "CSV") != "CSV" or body.get("lineEnding", "LF") != "LF":
            return _sf_error(400, "INVALIDJOB", "the stand-in takes CSV with LF line endings")
        job = _Job(
            id=self._sf_id("750"),
            object=str(body.get("object")),
            external_id=str(body["externalIdFieldName"]),
            operation="upsert",
        )
        self.jobs[job.id] = job
        return JSONResponse(self._info(job))

    async def _upload(self, request: Request) -> Response:
        if (refusal := self._refusal(request)) is not None:
            return refusal
        job = self.jobs.get(request.path_params["job_id"])
        if job is None:
            return _sf_error(404, "NOT_FOUND", "The requested resource does not exist")
        if job.state != "Open" or job.data is not None:
            return _sf_error(
                409, "INVALIDJOBSTATE", "data can be uploaded once, while the job is Open"
            )
        data = await request.body()
        if len(data) > self.max_upload_bytes:
            return _sf_error(
                400, "INVALIDBATCH", f"the upload is over {self.max_upload_bytes} bytes"
            )
        job.data = data.decode("utf-8")
        self.uploads.append((job.id, max(0, job.data.count("\n") - 1)))
        return Response(status_code=201)

    async def _job(self, request: Request) -> Response:
        if (refusal := self._refusal(request)) is not None:
            return refusal
        job = self.jobs.get(request.path_params["job_id"])
        if job is None:
            return _sf_error(404, "NOT_FOUND", "The requested resource does not exist")
        if request.method == "DELETE":
            del self.jobs[job.id]
            return Response(status_code=204)
        if request.method == "PATCH":
            wanted = (await request.json()).get("state")
            if wanted == "UploadComplete" and job.state == "Open" and job.data is not None:
                job.state = "UploadComplete"
                if self.polls_before_complete == 0:
                    self._process(job)
            elif wanted == "Aborted" and job.state in ("Open", "UploadComplete", "InProgress"):
                job.state = "Aborted"
            else:
                return _sf_error(
                    400, "INVALIDJOBSTATE", f"cannot change a {job.state} job to {wanted}"
                )
            return JSONResponse(self._info(job))
        if job.state in ("UploadComplete", "InProgress"):
            job.polls += 1
            job.state = "InProgress"
            if job.polls > self.polls_before_complete:
                self._process(job)
        return JSONResponse(self._info(job))

    async def _results(self, request: Request) -> Response:
        if (refusal := self._refusal(request)) is not None:
            return refusal
        job = self.jobs.get(request.path_params["job_id"])
        kind = request.path_params["kind"]
        if job is None or kind not in ("successfulResults", "failedResults"):
            return _sf_error(404, "NOT_FOUND", "The requested resource does not exist")
        if job.state != "JobComplete":
            return _sf_error(400, "INVALIDJOBSTATE", "results exist once the job is complete")
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        if kind == "successfulResults":
            writer.writerow(["sf__Id", "sf__Created", *job.header])
            for row in job.successes:
                writer.writerow([row["sf__Id"], row["sf__Created"], *(row[h] for h in job.header)])
        else:
            writer.writerow(["sf__Id", "sf__Error", *job.header])
            for row in job.failures:
                writer.writerow([row["sf__Id"], row["sf__Error"], *(row[h] for h in job.header)])
        return PlainTextResponse(out.getvalue(), media_type="text/csv")

    def _process(self, job: _Job) -> None:
        reader = csv.DictReader(io.StringIO(job.data or ""))
        job.header = list(reader.fieldnames or [])
        unknown = [name for name in job.header if name not in self.fields]
        if unknown or job.external_id not in job.header:
            job.state = "Failed"
            missing = unknown[0] if unknown else job.external_id
            job.error_message = f"InvalidBatch : Field name not found : {missing}"
            return
        for row in reader:
            job.processed += 1
            error, contact, created = self._apply(job, row)
            if error is not None:
                job.failed += 1
                job.failures.append({"sf__Id": "", "sf__Error": error, **row})
            else:
                assert contact is not None
                job.successes.append(
                    {"sf__Id": contact.id, "sf__Created": str(created).lower(), **row}
                )
        job.state = "JobComplete"

    def _apply(
        self, job: _Job, row: dict[str, str]
    ) -> tuple[str | None, StoredContact | None, bool]:
        key = row.get(job.external_id, "")
        if not key:
            return f"MISSING_ARGUMENT:{job.external_id} not specified:--", None, False
        if key in self.rejections:
            return self.rejections[key], None, False
        balance = row.get("Loyalty_Balance__c", "")
        if balance not in ("", "#N/A") and not balance.lstrip("-").isdigit():
            return (
                f"INVALID_TYPE_ON_FIELD_IN_RECORD:Loyalty Balance: value not of required "
                f"type: {balance}:Loyalty_Balance__c --",
                None,
                False,
            )
        contact = self.contacts.get(key)
        created = contact is None
        if contact is None:
            if row.get("LastName", "") in ("", "#N/A"):
                return (
                    "REQUIRED_FIELD_MISSING:Required fields are missing: [LastName]:LastName --",
                    None,
                    False,
                )
            contact = StoredContact(id=self._sf_id("003"), fields={})
            self.contacts[key] = contact
        for name, value in row.items():
            if value == "#N/A":
                contact.fields[name] = None
            elif value != "":
                contact.fields[name] = value
        contact.writes += 1
        return None, contact, created

    def _info(self, job: _Job) -> dict[str, Any]:
        return {
            "id": job.id,
            "operation": job.operation,
            "object": job.object,
            "externalIdFieldName": job.external_id,
            "state": job.state,
            "contentType": "CSV",
            "lineEnding": "LF",
            "numberRecordsProcessed": job.processed,
            "numberRecordsFailed": job.failed,
            **({"errorMessage": job.error_message} if job.error_message else {}),
        }


def _oauth_error(error: str, description: str) -> Response:
    return JSONResponse({"error": error, "error_description": description}, status_code=400)


def _sf_error(status: int, code: str, message: str) -> Response:
    return JSONResponse([{"errorCode": code, "message": message}], status_code=status)
