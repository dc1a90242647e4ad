"""A copy of the database alone reveals no one: a copy of the SQLite files and a `pg_dump` of the
schema are scanned for planted personal values after they went through every write path that
keeps them (customer create, idempotent answers, reads that journal access records)."""

from __future__ import annotations

import shutil
import subprocess
import urllib.parse
import warnings
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from crm_ledger.journal.keys import Role, create_api_key

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    from fastapi.testclient import TestClient

PLANTED = {
    "name": "Zebulon Quixotequist",
    "email": "zebulon.quixote@planted.example",
    "phone": "+48 601 234 567",
}
# Not personal by design (docs/privacy.md): kept in the clear, so the scan must find it; this
# proves the scan reads the customer's row at all.
EXTERNAL_REF = "shop-customer-90210"


@pytest.fixture
def settings_overrides(tmp_path: Path) -> dict[str, Any]:
    """The app (tests/apps.py) keeps its data directory in a folder of its own."""
    return {"data_dir": tmp_path / "data"}


def exercise(app: FastAPI) -> str:
    """Write the planted customer through the API, replay it, read it; their id."""
    with app.state.runtime.session_factory.begin() as session:
        keys = {role: create_api_key(session, role=role) for role in (Role.RECORDER, Role.ADMIN)}
    recorder = {"Authorization": f"Bearer {keys[Role.RECORDER]}", "Idempotency-Key": "plant-1"}
    admin = {"Authorization": f"Bearer {keys[Role.ADMIN]}", "X-Purpose": "scan test"}
    with TestClient(app) as client:
        body = {**PLANTED, "external_ref": EXTERNAL_REF, "tags": ["vip"]}
        created = client.post("/v1/customers", json=body, headers=recorder)
        assert created.status_code == 201, created.text
        customer: str = created.json()["id"]
        replay = client.post("/v1/customers", json=body, headers=recorder)
        assert replay.json()["email"] == PLANTED["email"]
        call = {
            "customer_id": customer,
            "type": "support_call",
            "channel": "phone",
            "occurred_at": "2026-11-25T10:00:00Z",
            "details": {"topic": "billing"},
        }
        written = client.post(
            "/v1/interactions", json=call, headers={**recorder, "Idempotency-Key": "plant-2"}
        )
        assert written.status_code == 201
        # The service itself still reads them back: the scan below is not vacuous.
        assert (
            client.get(f"/v1/customers/{customer}", headers=admin).json()["name"]
            == (PLANTED["name"])
        )
        assert client.get(f"/v1/crm/customers/{customer}", headers=admin).status_code == 200
        found = client.get(
            "/v1/crm/customers", headers=admin, params={"q": PLANTED["email"].upper()}
        ).json()["items"]
        assert [item["id"] for item in found] == [customer]
    return customer


def needles() -> list[bytes]:
    values = [*PLANTED.values(), "Quixotequist", "zebulon.quixote", "601 234 567"]
    out: list[bytes] = []
    for value in values:
        for variant in (value, value.lower(), value.upper()):
            out += [variant.encode("utf-8"), variant.encode("utf-16-le")]
    return out


def assert_no_planted_values(dump: bytes) -> None:
    assert EXTERNAL_REF.encode() in dump, "the scan did not see the customer's row"
    found = [needle for needle in needles() if needle in dump]
    assert found == []


def test_a_copy_of_the_sqlite_files_reveals_no_one(
    app: FastAPI, tmp_path: Path, database_url: str
) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("the SQLite copy; the pg_dump test covers PostgreSQL")
    exercise(app)
    copy = tmp_path / "copy"
    copy.mkdir()
    # The database file with its WAL and shared-memory files, as a backup would take them.
    database = Path(database_url.removeprefix("sqlite:///"))
    for path in database.parent.glob(database.name + "*"):
        shutil.copy(path, copy / path.name)
    dump = b"".join(path.read_bytes() for path in sorted(copy.iterdir()))
    assert_no_planted_values(dump)


def test_a_pg_dump_of_the_schema_reveals_no_one(app: FastAPI, database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("pg_dump; the SQLite copy test covers SQLite")
    pg_dump = shutil.which("pg_dump")
    if pg_dump is None:
        pytest.skip("pg_dump is not installed")
    exercise(app)
    url = urllib.parse.urlsplit(database_url.replace("+psycopg", ""))
    schema = urllib.parse.unquote(urllib.parse.parse_qs(url.query)["options"][0]).split("=")[1]
    server = urllib.parse.urlunsplit((url.scheme, url.netloc, url.path, "", ""))
    dump = subprocess.run(
        [pg_dump, "--no-owner", "-n", schema, server],
        check=True,
        capture_output=True,
        timeout=120,
    ).stdout
    assert_no_planted_values(dump)
