"""`crm-ledger sync salesforce` and `crm-ledger export salesforce` against the stand-in."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from crm_ledger.cli import app
from crm_ledger.outbound.salesforce.contacts import FIELDS
from crm_ledger.outbound.salesforce.standin import SalesforceStandIn
from crm_ledger.workers.lock import SingletonLock
from tests.outbound.salesforce.conftest import (
    CLIENT_ID,
    USERNAME,
    KeyPair,
    add_customers,
    add_points,
    free_port,
)


def _said(result: object) -> str:
    """stderr with Rich's line wrapping undone."""
    return " ".join(str(getattr(result, "stderr", "")).split())


def _env(database_url: str, key_file: Path, login_url: str) -> dict[str, str]:
    return {
        "CRM_LEDGER_DATABASE_URL": database_url,
        "CRM_LEDGER_SALESFORCE_LOGIN_URL": login_url,
        "CRM_LEDGER_SALESFORCE_CLIENT_ID": CLIENT_ID,
        "CRM_LEDGER_SALESFORCE_USERNAME": USERNAME,
        "CRM_LEDGER_SALESFORCE_PRIVATE_KEY_PATH": str(key_file),
        "CRM_LEDGER_SALESFORCE_POLL_SECONDS": "0.01",
    }


def test_sync_salesforce_sends_then_sends_nothing_when_nothing_changed(
    database_url: str,
    session_factory: sessionmaker[Session],
    standin: SalesforceStandIn,
    key_pair: KeyPair,
    tmp_path: Path,
) -> None:
    ids = add_customers(session_factory, 30)
    add_points(session_factory, {ids[0]: 7})
    key_file = tmp_path / "salesforce.pem"
    key_file.write_bytes(key_pair.private_pem)
    env = _env(database_url, key_file, standin.base_url)
    runner = CliRunner()

    first = runner.invoke(app, ["sync", "salesforce", "--data-dir", str(tmp_path)], env=env)
    assert first.exit_code == 0, first.output
    assert "30 Contacts sent in 2 jobs (30 created, 0 updated, 0 failed); 0 unchanged" in (
        _said(first)
    )
    assert len(standin.contacts) == 30
    assert standin.contacts[ids[0]].fields["Loyalty_Balance__c"] == "7"

    again = runner.invoke(app, ["sync", "salesforce", "--data-dir", str(tmp_path)], env=env)
    assert again.exit_code == 0, again.output
    assert "0 Contacts sent in 0 jobs" in _said(again) and "30 unchanged" in _said(again)
    assert all(contact.writes == 1 for contact in standin.contacts.values())

    # Someone edits a Contact in Salesforce: --resend-all repairs it.
    standin.contacts[ids[0]].fields["Loyalty_Balance__c"] = "999"
    repair = runner.invoke(
        app, ["sync", "salesforce", "--resend-all", "--data-dir", str(tmp_path)], env=env
    )
    assert repair.exit_code == 0, repair.output
    assert "30 Contacts sent in 1 job (0 created, 30 updated" in _said(repair)
    assert standin.contacts[ids[0]].fields["Loyalty_Balance__c"] == "7"


def test_sync_salesforce_says_why_it_stopped(
    database_url: str,
    session_factory: sessionmaker[Session],
    key_pair: KeyPair,
    tmp_path: Path,
) -> None:
    add_customers(session_factory, 2)
    key_file = tmp_path / "salesforce.pem"
    key_file.write_bytes(key_pair.private_pem)
    runner = CliRunner()
    down = runner.invoke(
        app,
        ["sync", "salesforce", "--data-dir", str(tmp_path)],
        env=_env(database_url, key_file, f"http://127.0.0.1:{free_port()}"),
    )
    assert down.exit_code == 1
    assert "cannot reach the Salesforce login host" in _said(down)
    assert "resumes the job in flight" in _said(down)

    unconfigured = _env(database_url, key_file, "http://127.0.0.1:1")
    unconfigured["CRM_LEDGER_SALESFORCE_CLIENT_ID"] = ""
    del unconfigured["CRM_LEDGER_SALESFORCE_USERNAME"]
    missing = runner.invoke(
        app, ["sync", "salesforce", "--data-dir", str(tmp_path)], env=unconfigured
    )
    assert missing.exit_code == 1
    assert "CRM_LEDGER_SALESFORCE_USERNAME" in _said(missing)


def test_export_salesforce_writes_a_bulk_api_csv_without_personal_data(
    database_url: str, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    ids = add_customers(session_factory, 1500)
    add_points(session_factory, {ids[1400]: 12})
    out = tmp_path / "contacts.csv"
    result = CliRunner().invoke(
        app,
        [
            "export",
            "salesforce",
            "--object",
            "Contact",
            "-o",
            str(out),
            "--data-dir",
            str(tmp_path),
        ],
        env={"CRM_LEDGER_DATABASE_URL": database_url},
    )
    assert result.exit_code == 0, result.output
    assert "Wrote 1,500 Contact rows" in _said(result)
    text = out.read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert tuple(rows[0]) == FIELDS
    assert [row["CRM_Ledger_Id__c"] for row in rows] == ids
    assert {row["Loyalty_Balance__c"] for row in rows} == {"0", "12"}
    assert {row["Last_Interaction__c"] for row in rows} == {"#N/A"}
    assert "Planted" not in text and "@example.com" not in text

    wrong = CliRunner().invoke(
        app,
        ["export", "salesforce", "--object", "Account", "--data-dir", str(tmp_path)],
        env={"CRM_LEDGER_DATABASE_URL": database_url},
    )
    assert wrong.exit_code == 2 and "only --object Contact" in _said(wrong)


def test_sync_salesforce_does_not_run_beside_the_worker(
    database_url: str,
    engine: Engine,
    session_factory: sessionmaker[Session],
    standin: SalesforceStandIn,
    key_pair: KeyPair,
    tmp_path: Path,
) -> None:
    add_customers(session_factory, 3)
    key_file = tmp_path / "salesforce.pem"
    key_file.write_bytes(key_pair.private_pem)
    worker_lock = SingletonLock(engine, name="salesforce")
    assert worker_lock.try_acquire()
    try:
        result = CliRunner().invoke(
            app,
            ["sync", "salesforce", "--data-dir", str(tmp_path)],
            env=_env(database_url, key_file, standin.base_url),
        )
    finally:
        worker_lock.release()
    assert result.exit_code == 1
    assert "The salesforce worker runs in another process" in _said(result)
    assert standin.contacts == {} and standin.uploads == []
