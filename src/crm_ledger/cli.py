"""The `crm-ledger` command line.

Commands:

    crm-ledger keys create --role ROLE [--label L] [--data-dir DIR]   prints the new key, alone
    crm-ledger keys list [--data-dir DIR]
    crm-ledger keys revoke KEY_ID [--data-dir DIR]

Only results go to stdout (so `KEY=$(crm-ledger keys create ...)` works); status and errors go to
stderr. Every command builds its settings with `_settings(data_dir)` and its database with
`_migrated_engine(settings)`; a new command group is a `typer.Typer()` added with
`app.add_typer`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from crm_ledger.config import Settings
from crm_ledger.db.session import make_engine, make_session_factory, upgrade_database
from crm_ledger.errors import NotFound
from crm_ledger.journal.keys import Role, create_api_key, list_api_keys, revoke_api_key

app = typer.Typer(
    help="crm-ledger: a customer ledger anchored on an EVM chain.", no_args_is_help=True
)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

stderr = Console(stderr=True, highlight=False)

DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Data directory (SQLite journal, chain state); default CRM_LEDGER_DATA_DIR or ./data",
        file_okay=False,
    ),
]


def _settings(data_dir: Path | None) -> Settings:
    """Settings from the environment, with `--data-dir` overriding CRM_LEDGER_DATA_DIR."""
    return Settings(data_dir=data_dir) if data_dir is not None else Settings()


def _migrated_engine(settings: Settings) -> Engine:
    """The journal's engine, migrated to the latest schema."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(
        settings.resolved_database_url, sqlite_synchronous=settings.sqlite_synchronous
    )
    upgrade_database(engine)
    return engine


@contextmanager
def _transaction(data_dir: Path | None) -> Iterator[Session]:
    """One committed transaction on the migrated journal of `data_dir`."""
    engine = _migrated_engine(_settings(data_dir))
    try:
        with make_session_factory(engine).begin() as session:
            yield session
    finally:
        engine.dispose()


@keys_app.command("create")
def keys_create(
    role: Annotated[
        Role, typer.Option("--role", help="What the key may do.", case_sensitive=False)
    ],
    label: Annotated[
        str | None, typer.Option("--label", help="A note for operators, e.g. who holds it.")
    ] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Create an API key and print it: the only time it is shown (only its hash is stored)."""
    with _transaction(data_dir) as session:
        plaintext = create_api_key(session, role=role, label=label)
    stderr.print(f"[green]Created a {role.value} key.[/green] Store it now: it is not shown again.")
    typer.echo(plaintext)


@keys_app.command("list")
def keys_list(data_dir: DataDirOption = None) -> None:
    """List API keys (ids, roles, labels, dates; never secrets)."""
    with _transaction(data_dir) as session:
        keys = list_api_keys(session)
    if not keys:
        stderr.print("No API keys yet: create one with `crm-ledger keys create --role ROLE`.")
        return
    # Plain aligned columns, label last: nothing is truncated, and `cut`/`awk` can read it.
    typer.echo(f"{'id':36}  {'role':9}  {'created':20}  {'revoked':20}  label")
    for key in keys:
        revoked = _when(key.revoked_at) if key.revoked_at else "-"
        created = _when(key.created_at)
        typer.echo(f"{key.id:36}  {key.role:9}  {created:20}  {revoked:20}  {key.label or ''}")


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id, as `keys list` shows it.")],
    data_dir: DataDirOption = None,
) -> None:
    """Revoke an API key; running services stop accepting it within a few seconds."""
    try:
        with _transaction(data_dir) as session:
            info = revoke_api_key(session, key_id=key_id)
    except NotFound as exc:
        stderr.print(f"[red]{escape(exc.detail)}[/red] (`crm-ledger keys list` shows the ids)")
        raise typer.Exit(code=1) from None
    assert info.revoked_at is not None
    stderr.print(f"Key {info.id} ({info.role}) is revoked since {_when(info.revoked_at)}.")
