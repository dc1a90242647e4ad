"""`crm-ledger keys`: create prints the key alone, stores only its hash; list; revoke; expiry
and rotation."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from crm_ledger.cli import app
from crm_ledger.db.models import ApiKey

runner = CliRunner()


@pytest.fixture
def env(database_url: str) -> dict[str, str]:
    """The CLI's environment: the parametrised database."""
    return {"CRM_LEDGER_DATABASE_URL": database_url}


def run(env: dict[str, str], tmp_path: Path, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, [*args, "--data-dir", str(tmp_path / "data")], env=env)
    return result.exit_code, result.stdout, result.stderr


def test_keys_create_prints_the_key_alone_and_stores_only_its_hash(
    env: dict[str, str], tmp_path: Path, session_factory: sessionmaker[Session]
) -> None:
    code, out, err = run(env, tmp_path, "keys", "create", "--role", "recorder", "--label", "ci")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 1 and out == lines[0] + "\n"
    key = lines[0]
    assert key.startswith("crml_") and len(key) == 48
    assert "recorder" in err

    with session_factory() as session:
        (row,) = session.scalars(select(ApiKey)).all()
    assert row.key_hash == hashlib.sha256(key.encode()).digest()
    assert row.role == "recorder" and row.label == "ci"
    stored = [str(getattr(row, c.key)) for c in ApiKey.__table__.columns]
    assert not any(key in value for value in stored)


def test_keys_create_warns_when_it_creates_the_journal_and_names_it(
    env: dict[str, str], tmp_path: Path
) -> None:
    code, _, err = run(env, tmp_path, "keys", "create", "--role", "recorder")
    said = " ".join(err.split())
    assert code == 0 and "There was no journal at" in said and "will answer 401" in said
    code, _, err = run(env, tmp_path, "keys", "create", "--role", "auditor")
    said = " ".join(err.split())
    assert code == 0 and "There was no journal" not in said
    where = "ledger.sqlite" if "sqlite" in env["CRM_LEDGER_DATABASE_URL"] else "postgresql"
    assert "Created a key with role auditor in the journal at" in said and where in said


def test_keys_list_shows_no_secrets_and_revoke_revokes(
    env: dict[str, str], tmp_path: Path, session_factory: sessionmaker[Session]
) -> None:
    _, key, _ = run(env, tmp_path, "keys", "create", "--role", "auditor")
    code, out, _ = run(env, tmp_path, "keys", "list")
    assert code == 0
    assert out.splitlines()[1].split()[4] == "-"
    with session_factory() as session:
        row = session.scalars(select(ApiKey)).one()
    assert row.id in out and "auditor" in out
    assert key.strip() not in out and row.key_hash.hex() not in out

    code, _, err = run(env, tmp_path, "keys", "revoke", row.id)
    assert code == 0, err
    with session_factory() as session:
        assert session.scalars(select(ApiKey)).one().revoked_at is not None
    _, out, _ = run(env, tmp_path, "keys", "list")
    _id, _role, _created_day, _created_time, revoked_day, *_ = out.splitlines()[1].split()
    assert revoked_day != "-"


def test_revoking_an_unknown_key_fails_clearly(env: dict[str, str], tmp_path: Path) -> None:
    code, out, err = run(env, tmp_path, "keys", "revoke", "no-such-id")
    assert code == 1
    assert out == ""
    assert "no-such-id" in err


def test_an_unknown_role_is_refused(env: dict[str, str], tmp_path: Path) -> None:
    code, out, _ = run(env, tmp_path, "keys", "create", "--role", "root")
    assert code == 2
    assert out == ""


# Key expiry and rotation (issue 10, part 5) ------------------------------------------------


def test_keys_create_with_an_expiry_stores_it_and_list_shows_it(
    env: dict[str, str], tmp_path: Path, session_factory: sessionmaker[Session]
) -> None:
    before = datetime.now(UTC)
    code, out, err = run(
        env, tmp_path, "keys", "create", "--role", "recorder", "--expires-in", "90d"
    )
    assert code == 0, err
    assert out.strip().startswith("crml_") and "expires at" in err
    with session_factory() as session:
        row = session.scalars(select(ApiKey)).one()
    assert row.expires_at is not None
    assert timedelta(days=90) <= row.expires_at - before < timedelta(days=90, minutes=5)
    _, listed, _ = run(env, tmp_path, "keys", "list")
    assert row.expires_at.strftime("%Y-%m-%d") in listed.splitlines()[1]


@pytest.mark.parametrize("bad", ["90", "d", "-1d", "1y", "0s", "1.5h"])
def test_a_bad_expiry_is_refused(env: dict[str, str], tmp_path: Path, bad: str) -> None:
    code, out, _ = run(env, tmp_path, "keys", "create", "--role", "recorder", "--expires-in", bad)
    assert code == 2
    assert out == ""


def test_keys_rotate_issues_a_key_with_the_same_role_and_expires_the_old_one(
    env: dict[str, str], tmp_path: Path, session_factory: sessionmaker[Session]
) -> None:
    _, old_key, _ = run(env, tmp_path, "keys", "create", "--role", "marketing", "--label", "crm")
    with session_factory() as session:
        old_id = session.scalars(select(ApiKey)).one().id
    before = datetime.now(UTC)

    code, out, err = run(env, tmp_path, "keys", "rotate", old_id, "--overlap", "24h")

    assert code == 0, err
    new_key = out.strip()
    assert new_key.startswith("crml_") and new_key != old_key.strip() and old_id in err
    with session_factory() as session:
        old = session.scalars(select(ApiKey).where(ApiKey.id == old_id)).one()
        new = session.scalars(
            select(ApiKey).where(ApiKey.key_hash == hashlib.sha256(new_key.encode()).digest())
        ).one()
    assert new.role == "marketing" and new.expires_at is None and old.revoked_at is None
    assert new.label is not None and old_id in new.label and "crm" in new.label
    assert old.expires_at is not None
    assert timedelta(hours=24) <= old.expires_at - before < timedelta(hours=24, minutes=5)


def test_rotating_a_revoked_or_unknown_key_fails_clearly(
    env: dict[str, str], tmp_path: Path, session_factory: sessionmaker[Session]
) -> None:
    run(env, tmp_path, "keys", "create", "--role", "auditor")
    with session_factory() as session:
        key_id = session.scalars(select(ApiKey)).one().id
    run(env, tmp_path, "keys", "revoke", key_id)

    code, out, err = run(env, tmp_path, "keys", "rotate", key_id)
    assert (code, out) == (1, "")
    assert "revoked" in err
    code, out, err = run(env, tmp_path, "keys", "rotate", "no-such-id")
    assert (code, out) == (1, "")
    assert "no-such-id" in err
    with session_factory() as session:
        assert len(session.scalars(select(ApiKey)).all()) == 1


def test_serve_refuses_half_a_tls_configuration(env: dict[str, str], tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("not used")

    code, _, err = run(env, tmp_path, "serve", "--tls-certfile", str(cert))

    assert code == 2
    assert "--tls-keyfile" in err
