"""`crm-ledger sync salesforce` and `crm-ledger export salesforce`: Salesforce from the shell.

Exports: `register`, `export_salesforce`.

`sync salesforce` (holding the `salesforce` worker's singleton lock, so it never runs beside
the worker) compares every customer with what Salesforce last accepted and sends the
changed ones in Bulk API 2.0 jobs, with a progress bar and a summary (exit 1 when Salesforce
cannot be reached or refuses a login or a job). `export salesforce --object Contact` writes the
same fields as a CSV that Data Loader or a Bulk API 2.0 upsert job takes by hand.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import select

from crm_ledger.config import Settings
from crm_ledger.db.models import Customer
from crm_ledger.db.session import make_engine, make_session_factory, upgrade_database
from crm_ledger.errors import LedgerError, SalesforceError
from crm_ledger.journal.privacy import attach_keyring, load_keyring
from crm_ledger.workers.lock import SingletonLock

__all__ = ["export_salesforce", "register"]

stderr = Console(stderr=True, highlight=False)
_EXPORT_CHUNK = 1000

DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Data directory (SQLite journal, chain state); default CRM_LEDGER_DATA_DIR or ./data",
        file_okay=False,
    ),
]


def register(app: typer.Typer) -> None:
    """Add `sync salesforce` to the `crm-ledger` app."""
    sync_app = typer.Typer(help="Push the ledger into other systems once.", no_args_is_help=True)
    sync_app.command("salesforce")(sync_salesforce)
    app.add_typer(sync_app, name="sync")


def _settings(data_dir: Path | None) -> Settings:
    return Settings(data_dir=data_dir) if data_dir is not None else Settings()


def sync_salesforce(
    data_dir: DataDirOption = None,
    resend_all: Annotated[
        bool,
        typer.Option(
            "--resend-all",
            help="Send every Contact, changed or not (repairs Contacts edited in Salesforce).",
        ),
    ] = False,
) -> None:
    """Send every customer whose Contact fields changed to Salesforce (Bulk API 2.0 upsert)."""
    import httpx

    from crm_ledger.outbound.salesforce.sync import (
        JobOutcome,
        SyncSummary,
        mark_all,
        sync_from_settings,
    )

    settings = _settings(data_dir)
    engine = make_engine(
        settings.resolved_database_url, sqlite_synchronous=settings.sqlite_synchronous
    )
    attach_keyring(engine, load_keyring(settings))
    lock = SingletonLock(engine, name="salesforce")
    try:
        upgrade_database(engine)
        if not lock.try_acquire():
            stderr.print(
                "[red]The salesforce worker runs in another process[/red] (it keeps Contacts "
                "current already); stop it to run a full sync by hand."
            )
            raise typer.Exit(1)
        session_factory = make_session_factory(engine)
        total = mark_all(session_factory, resend=resend_all)
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=stderr,
            transient=True,
        ) as progress:
            task = progress.add_task("Comparing and sending Contacts", total=total)

            def advance(outcome: JobOutcome) -> None:
                progress.advance(task, outcome.records - outcome.to_create)

            async def run() -> SyncSummary:
                async with httpx.AsyncClient(timeout=settings.salesforce_timeout_seconds) as http:
                    sync = sync_from_settings(
                        settings=settings, session_factory=session_factory, http=http
                    )
                    sync.on_job = advance
                    return await sync.drain()

            try:
                summary = asyncio.run(run())
            except LedgerError as exc:
                progress.stop()
                stderr.print(f"[red]Salesforce sync stopped:[/red] {escape(str(exc))}")
                if isinstance(exc, SalesforceError):
                    stderr.print("Run it again: it resumes the job in flight, losing nothing.")
                raise typer.Exit(1) from None
    finally:
        lock.release()
        engine.dispose()
    unchanged = total - summary.sent
    stderr.print(
        f"Salesforce: {summary.sent:,} Contacts sent in {summary.jobs:,} "
        f"job{'' if summary.jobs == 1 else 's'} "
        f"({summary.created:,} created, {summary.updated:,} updated, {summary.failed:,} failed); "
        f"{unchanged:,} unchanged, not sent."
    )
    for customer_id, error in summary.errors:
        stderr.print(f"  [yellow]{customer_id}[/yellow]: {escape(error)}")
    if summary.failed > len(summary.errors):
        stderr.print(f"  ... and {summary.failed - len(summary.errors):,} more")


def export_salesforce(*, object_name: str, output: Path | None, data_dir: Path | None) -> int:
    """Write the Contact CSV for Data Loader / a Bulk API 2.0 upsert; rows written."""
    from crm_ledger.outbound.salesforce.contacts import contact_csv, contact_values

    if object_name != "Contact":
        raise typer.BadParameter(
            f"only --object Contact can be exported, not {object_name!r}", param_hint="--object"
        )
    settings = _settings(data_dir)
    engine = make_engine(
        settings.resolved_database_url, sqlite_synchronous=settings.sqlite_synchronous
    )
    attach_keyring(engine, load_keyring(settings))
    rows = 0
    try:
        upgrade_database(engine)
        session_factory = make_session_factory(engine)
        with session_factory() as session:
            pks = list(session.scalars(select(Customer.pk).order_by(Customer.pk)))
            chunks = []
            for start in range(0, len(pks), _EXPORT_CHUNK):
                values = contact_values(session, pks[start : start + _EXPORT_CHUNK])
                text = contact_csv(values)
                chunks.append(text if start == 0 else text.partition("\n")[2])
                rows += len(values)
            if not pks:
                chunks.append(contact_csv([]))
    finally:
        engine.dispose()
    data = "".join(chunks)
    if output is None:
        typer.echo(data, nl=False)
    else:
        output.write_text(data, encoding="utf-8")
    return rows
