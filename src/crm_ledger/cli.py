"""The `crm-ledger` command line.

Commands:

    crm-ledger keys create --role ROLE [--label L] [--data-dir DIR]   prints the new key, alone
    crm-ledger keys list [--data-dir DIR]
    crm-ledger keys revoke KEY_ID [--data-dir DIR]
    crm-ledger serve [--data-dir DIR] [--host H] [--port N]     REST API + anchorer (+ Anvil)
    crm-ledger worker anchor [--data-dir DIR]                   the anchorer alone
    crm-ledger worker index [--data-dir DIR]                    the indexer alone
    crm-ledger chain recover [--data-dir DIR]                   new ledger epoch after a reset
    crm-ledger audit | export | digest | verify                 auditors (`audit/cli.py`)

Only results go to stdout (so `KEY=$(crm-ledger keys create ...)` works); status and errors go to
stderr. Every command builds its settings with `_settings(data_dir)` and its database with
`_migrated_engine(settings)`; a new command group is a `typer.Typer()` added with
`app.add_typer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from sqlalchemy import Engine, inspect, make_url
from sqlalchemy.orm import Session

from crm_ledger.audit import cli as audit_cli
from crm_ledger.config import Settings
from crm_ledger.db.session import make_engine, make_session_factory, upgrade_database
from crm_ledger.errors import LedgerError, NotFound
from crm_ledger.journal.keys import Role, create_api_key, list_api_keys, revoke_api_key

app = typer.Typer(
    help="crm-ledger: a customer ledger anchored on an EVM chain.", no_args_is_help=True
)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
audit_cli.register(app)

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
    settings = _settings(data_dir)
    journal = _journal_name(settings)
    existed = _journal_exists(settings)
    with _transaction(data_dir) as session:
        plaintext = create_api_key(session, role=role, label=label)
    if not existed:
        stderr.print(
            f"[yellow]There was no journal at {escape(journal)}: a new, empty one was created "
            "for this key.[/yellow] A service using another data directory or database will "
            "answer 401 for it: run this where the service runs, or pass --data-dir / set "
            "CRM_LEDGER_DATA_DIR or CRM_LEDGER_DATABASE_URL as the service has them."
        )
    stderr.print(
        f"[green]Created a key with role {role.value}[/green] in the journal at {escape(journal)}. "
        "Store it now: it is not shown again."
    )
    typer.echo(plaintext)


def _journal_name(settings: Settings) -> str:
    """Where the journal is, for people: the SQLite file, or the database URL sans password."""
    url = make_url(settings.resolved_database_url)
    if url.get_backend_name() == "sqlite":
        return str(url.database)
    return url.render_as_string(hide_password=True)


def _journal_exists(settings: Settings) -> bool:
    """Whether the journal was created already (migrated at least once)."""
    url = make_url(settings.resolved_database_url)
    if url.get_backend_name() == "sqlite":
        return url.database is not None and Path(url.database).is_file()
    engine = make_engine(settings.resolved_database_url)
    try:
        with engine.connect() as conn:
            return inspect(conn).has_table("alembic_version")
    finally:
        engine.dispose()


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


LogLevelOption = Annotated[str, typer.Option("--log-level", help="debug, info, warning or error")]


def _configure_logging(level: str) -> None:
    """Service logging; web3's provider logs full RPC URLs (API keys included) at INFO."""
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("web3").setLevel(max(logging.WARNING, logging.getLogger().level))


@app.command("serve")
def serve(
    data_dir: DataDirOption = None,
    host: Annotated[str | None, typer.Option("--host", help="default 127.0.0.1")] = None,
    port: Annotated[int | None, typer.Option("--port", help="default 8000")] = None,
    log_level: LogLevelOption = "info",
) -> None:
    """Run the service: REST API, anchorer, and (without CRM_LEDGER_RPC_URL) a local Anvil."""
    import uvicorn

    from crm_ledger.app import create_app

    settings = _settings(data_dir)
    _configure_logging(log_level)
    uvicorn.run(
        create_app(settings),
        host=host or settings.host,
        port=port or settings.port,
        log_level=log_level,
        access_log=False,
    )


worker_app = typer.Typer(help="Run one background role without the API.", no_args_is_help=True)
app.add_typer(worker_app, name="worker")


@worker_app.command("anchor")
def worker_anchor(data_dir: DataDirOption = None, log_level: LogLevelOption = "info") -> None:
    """Run only the anchorer (a singleton: extra copies stand by until the lock frees)."""
    from crm_ledger.runtime import Runtime

    settings = _settings(data_dir)
    _configure_logging(log_level)
    engine = _migrated_engine(settings)

    async def run() -> None:
        runtime = Runtime(
            settings=settings, engine=engine, session_factory=make_session_factory(engine)
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await runtime.start()
        await stop.wait()
        await runtime.stop()

    try:
        asyncio.run(run())
    finally:
        engine.dispose()


@worker_app.command("index")
def worker_index(data_dir: DataDirOption = None, log_level: LogLevelOption = "info") -> None:
    """Run only the chain indexer and its reconciliations (a singleton: extra copies, and the
    indexer inside `serve`, stand by until the lock frees).

    Follows the chain at CRM_LEDGER_RPC_URL, or else the Anvil a `crm-ledger serve` on the same
    data directory started (127.0.0.1:CRM_LEDGER_ANVIL_PORT). Exits 1 if indexing halts (a
    chain reset: see the message), 0 on SIGINT/SIGTERM.
    """
    from crm_ledger.chain.client import make_async_web3
    from crm_ledger.indexer.indexer import indexing_beside

    settings = _settings(data_dir).model_copy(update={"run_indexer": True})
    _configure_logging(log_level)
    engine = _migrated_engine(settings)
    rpc_url = settings.rpc_url or f"http://127.0.0.1:{settings.anvil_port}"

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        w3 = make_async_web3(rpc_url, settings.rpc_timeout_seconds)
        try:
            async with indexing_beside(
                w3=w3, session_factory=make_session_factory(engine), settings=settings
            ) as indexer:
                assert indexer is not None
                while not stop.is_set():
                    if indexer.state.state == "halted":
                        typer.echo(f"indexing halted: {indexer.state.message}", err=True)
                        return 1
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=1.0)
        finally:
            await w3.provider.disconnect()
        return 0

    try:
        code = asyncio.run(run())
    finally:
        engine.dispose()
    raise typer.Exit(code)


chain_app = typer.Typer(
    help="Operate on the chain the ledger is anchored on.", no_args_is_help=True
)
app.add_typer(chain_app, name="chain")


@chain_app.command("recover")
def chain_recover(data_dir: DataDirOption = None) -> None:
    """After a chain reset: open a new ledger epoch and re-anchor the whole journal onto it.

    Run it with the service stopped. It refuses when the recorded deployment is intact.
    """
    from crm_ledger.chain.client import LedgerChain, make_async_web3
    from crm_ledger.chain.deploy import recover_new_epoch
    from crm_ledger.chain.node import start_anvil
    from crm_ledger.chain.signer import load_signer

    settings = _settings(data_dir)
    engine = _migrated_engine(settings)
    node = None
    try:
        rpc_url = settings.rpc_url
        if rpc_url is None:
            node = start_anvil(
                port=settings.anvil_port,
                state_path=settings.data_dir / "anvil-state.json",
                binary=settings.anvil_bin,
            )
            rpc_url = node.rpc_url

        async def recover() -> tuple[int, str]:
            w3 = make_async_web3(rpc_url, settings.rpc_timeout_seconds)
            try:
                chain = LedgerChain(w3, load_signer(settings, chain_id=await w3.eth.chain_id), None)
                row = await recover_new_epoch(
                    session_factory=make_session_factory(engine), chain=chain
                )
                return row.epoch, row.address
            finally:
                await w3.provider.disconnect()

        try:
            epoch, address = asyncio.run(recover())
        except LedgerError as exc:
            stderr.print(f"[red]recovery refused:[/red] {escape(str(exc))}")
            raise typer.Exit(1) from None
        stderr.print(
            f"opened ledger epoch {epoch} at {address}; start the service to re-anchor the journal"
        )
    finally:
        if node is not None:
            node.stop()
        engine.dispose()
