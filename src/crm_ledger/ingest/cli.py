"""`crm-ledger import orders FILE --source ID`: backfill a shop's orders from a JSON-Lines file.

Status and the summary go to stderr; the exit code is 0 when every line was stored and mapped,
1 when some lines were malformed or some orders could not be mapped (they are listed, and
`GET /v1/sources/{id}/deliveries?status=failed` shows the failed ones), 2 when the import could
not run (unknown source, unreadable file).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import IO, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

from crm_ledger.config import Settings
from crm_ledger.db.session import make_engine, make_session_factory, upgrade_database
from crm_ledger.errors import NotFound
from crm_ledger.ingest.backfill import import_orders

stderr = Console(stderr=True, highlight=False, soft_wrap=True)
SHOWN_PROBLEMS = 20

import_app = typer.Typer(help="Import data into the ledger.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the `import` command group to the main CLI."""
    app.add_typer(import_app, name="import")


@import_app.command("orders")
def import_orders_command(
    file: Annotated[
        Path, typer.Argument(help="JSON Lines: one platform order object per line", dir_okay=False)
    ],
    source: Annotated[str, typer.Option("--source", help="The source id the orders are from")],
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="Data directory; default CRM_LEDGER_DATA_DIR or ./data"),
    ] = None,
) -> None:
    """Backfill orders; idempotent with the webhooks (an order already recorded in the same
    state is not recorded again)."""
    settings = Settings(data_dir=data_dir) if data_dir is not None else Settings()
    try:
        handle = file.open("rb")
    except OSError as exc:
        stderr.print(f"[red]cannot read {escape(str(file))}: {escape(exc.strerror or '')}[/red]")
        raise typer.Exit(code=2) from None
    engine = make_engine(
        settings.resolved_database_url, sqlite_synchronous=settings.sqlite_synchronous
    )
    try:
        upgrade_database(engine)
        with handle, _progress() as progress:
            task = progress.add_task("importing", total=file.stat().st_size)
            summary = import_orders(
                session_factory=make_session_factory(engine),
                source_id=source,
                lines=_lines(handle),
                batch_size=settings.ingest_batch_size,
                on_line=lambda size: progress.advance(task, size),
            )
    except NotFound as exc:
        stderr.print(f"[red]{escape(exc.detail)}[/red] (GET /v1/sources lists them)")
        raise typer.Exit(code=2) from None
    finally:
        engine.dispose()
    stderr.print(
        f"{summary.lines} orders read: {summary.stored} stored, {summary.already_stored} "
        f"already stored; {summary.mapped} mapped ({summary.records} records written), "
        f"{summary.failed} failed, {len(summary.malformed)} malformed lines"
    )
    for number, why in summary.malformed[:SHOWN_PROBLEMS]:
        stderr.print(f"  line {number}: {escape(why)}")
    if summary.failed:
        stderr.print(f"  failed orders: GET /v1/sources/{source}/deliveries?status=failed")
    if summary.malformed or summary.failed:
        raise typer.Exit(code=1)


def _lines(handle: IO[bytes]) -> Iterator[bytes]:
    yield from handle


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeElapsedColumn(),
        console=stderr,
        transient=False,
    )
