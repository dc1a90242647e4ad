"""The `crm-ledger` command line.

Commands:

    crm-ledger keys create --role ROLE [--label L] [--expires-in 90d] [--data-dir DIR]
                                                      prints the new key, alone
    crm-ledger keys list [--data-dir DIR]
    crm-ledger keys revoke KEY_ID [--data-dir DIR]
    crm-ledger keys rotate KEY_ID [--overlap 24h] [--data-dir DIR]   prints the new key, alone
    crm-ledger keys rotate-master [--new-key-file F] [--data-dir DIR]   re-wrap every data key
    crm-ledger serve [--data-dir DIR] [--host H] [--port N]     REST API + every worker (+ Anvil)
                     [--tls-certfile PEM --tls-keyfile PEM]     HTTPS
                     [--workers N]                              N API processes on the port
    crm-ledger worker anchor|index|loyalty|NAME [--data-dir DIR]   one background worker alone
    crm-ledger worker chain [--data-dir DIR]                    the three chain workers together
    crm-ledger chain recover [--data-dir DIR]                   new ledger epoch after a reset
    crm-ledger audit | export | digest | verify                 auditors (`audit/cli.py`)
    crm-ledger import orders FILE --source ID                   shop backfill (`ingest/cli.py`)
    crm-ledger sync salesforce [--data-dir DIR]                 Contacts current, once
    crm-ledger export salesforce --object Contact [-o FILE]     a Data Loader / Bulk API CSV

Only results go to stdout (so `KEY=$(crm-ledger keys create ...)` works); status and errors go to
stderr. Every command builds its settings with `_settings(data_dir)` and its database with
`_migrated_engine(settings)`; a new command group is a `typer.Typer()` added with
`app.add_typer`.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
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
from crm_ledger.errors import Conflict, LedgerError, NotFound
from crm_ledger.ingest import cli as ingest_cli
from crm_ledger.journal.keys import (
    Role,
    create_api_key,
    list_api_keys,
    mark_keys_changed,
    revoke_api_key,
    rotate_api_key,
)
from crm_ledger.journal.privacy import (
    NEXT_SUFFIX,
    KeyRing,
    MasterKey,
    attach_keyring,
    key_file,
    load_keyring,
    read_key_file,
    write_key_file,
)
from crm_ledger.journal.rotation import rotate_master_key
from crm_ledger.observability.logs import LogFormat, configure_logging
from crm_ledger.outbound.salesforce import cli as salesforce_cli

app = typer.Typer(
    help="crm-ledger: a customer ledger anchored on an EVM chain.", no_args_is_help=True
)
keys_app = typer.Typer(help="Create, list, revoke and rotate API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
audit_cli.register(app)
# Commerce ingest (issue 11): `crm-ledger import orders FILE --source ID`.
ingest_cli.register(app)
# Salesforce (issue 12): `crm-ledger sync salesforce`, `crm-ledger export salesforce`.
salesforce_cli.register(app)

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
    attach_keyring(engine, load_keyring(settings))
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


_DURATION = re.compile(r"(\d{1,6})([smhdw])", re.ASCII)
_DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def _duration(text: str) -> timedelta:
    """A duration such as 90d, 24h, 30m, 45s or 2w."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise typer.BadParameter(
            f"{escape(text)!r} is not a duration: write a number and a unit, such as 90d, 24h, "
            "30m, 45s or 2w"
        )
    return timedelta(**{_DURATION_UNITS[match[2]]: int(match[1])})


@keys_app.command("create")
def keys_create(
    role: Annotated[
        Role, typer.Option("--role", help="What the key may do.", case_sensitive=False)
    ],
    label: Annotated[
        str | None, typer.Option("--label", help="A note for operators, e.g. who holds it.")
    ] = None,
    expires_in: Annotated[
        str | None,
        typer.Option(
            "--expires-in", help="The key stops working after this long: 90d, 24h, 30m, 2w."
        ),
    ] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Create an API key and print it: the only time it is shown (only its hash is stored)."""
    lifetime = _duration(expires_in) if expires_in is not None else None
    if lifetime is not None and lifetime <= timedelta(0):
        raise typer.BadParameter("--expires-in must be longer than 0")
    settings = _settings(data_dir)
    journal = _journal_name(settings)
    existed = _journal_exists(settings)
    with _transaction(data_dir) as session:
        plaintext = create_api_key(session, role=role, label=label, expires_in=lifetime)
    if not existed:
        stderr.print(
            f"[yellow]There was no journal at {escape(journal)}: a new, empty one was created "
            "for this key.[/yellow] A service using another data directory or database will "
            "answer 401 for it: run this where the service runs, or pass --data-dir / set "
            "CRM_LEDGER_DATA_DIR or CRM_LEDGER_DATABASE_URL as the service has them."
        )
    until = f" It expires at {_when(datetime.now(UTC) + lifetime)}." if lifetime else ""
    stderr.print(
        f"[green]Created a key with role {role.value}[/green] in the journal at "
        f"{escape(journal)}.{until} Store it now: it is not shown again."
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
    typer.echo(f"{'id':36}  {'role':9}  {'created':20}  {'revoked':20}  {'expires':20}  label")
    for key in keys:
        revoked = _when(key.revoked_at) if key.revoked_at else "-"
        created = _when(key.created_at)
        expires = _when(key.expires_at) if key.expires_at else "-"
        typer.echo(
            f"{key.id:36}  {key.role:9}  {created:20}  {revoked:20}  {expires:20}  "
            f"{key.label or ''}"
        )


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
    mark_keys_changed(_settings(data_dir).data_dir)
    assert info.revoked_at is not None
    stderr.print(f"Key {info.id} ({info.role}) is revoked since {_when(info.revoked_at)}.")


@keys_app.command("rotate")
def keys_rotate(
    key_id: Annotated[str, typer.Argument(help="The key's id, as `keys list` shows it.")],
    overlap: Annotated[
        str,
        typer.Option(
            "--overlap",
            help="How long the old key keeps working beside the new one: 24h, 7d, 0s.",
        ),
    ] = "24h",
    data_dir: DataDirOption = None,
) -> None:
    """Issue a new key with the same role and print it; the old key expires after the overlap."""
    window = _duration(overlap)
    try:
        with _transaction(data_dir) as session:
            plaintext, new, old = rotate_api_key(session, key_id=key_id, overlap=window)
    except (NotFound, Conflict) as exc:
        stderr.print(f"[red]{escape(exc.detail)}[/red] (`crm-ledger keys list` shows the keys)")
        raise typer.Exit(code=1) from None
    mark_keys_changed(_settings(data_dir).data_dir)
    assert old.expires_at is not None
    stderr.print(
        f"[green]Created {new.role} key {new.id}[/green] to replace {old.id}, which expires at "
        f"{_when(old.expires_at)}. Store the new key now: it is not shown again."
    )
    typer.echo(plaintext)


@keys_app.command("rotate-master")
def keys_rotate_master(
    data_dir: DataDirOption = None,
    new_key_file: Annotated[
        Path | None,
        typer.Option(
            "--new-key-file",
            help="The new master key (base64 in a file; created with a random key if missing). "
            "Required when the key comes from CRM_LEDGER_MASTER_KEY; optional with a key file.",
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Re-wrap every customer's data key under a new master key; records are not touched.

    With a key file (CRM_LEDGER_MASTER_KEY_FILE, or the data directory's master.key) the new
    key goes to `<file>.next` first and replaces the file once every row is re-wrapped; an
    interrupted rotation is finished by running the command again. Run it with the service
    stopped, or restart every process right after: a running process knows only the old key.
    """
    settings = _settings(data_dir)
    try:
        current = load_keyring(settings)
        pending: Path | None = None
        if settings.master_key is not None:
            if new_key_file is None:
                stderr.print(
                    "[red]The master key comes from CRM_LEDGER_MASTER_KEY: pass --new-key-file "
                    "FILE; the new key goes there.[/red]"
                )
                raise typer.Exit(code=1)
            if not new_key_file.exists():
                write_key_file(new_key_file, secrets.token_bytes(32))
            keyring = KeyRing(MasterKey(read_key_file(new_key_file)), current.current)
        else:
            path = key_file(settings)
            pending = path.with_name(path.name + NEXT_SUFFIX)
            if pending.exists():
                keyring = current  # a rotation was interrupted: its next key is already current
            else:
                fresh = read_key_file(new_key_file) if new_key_file else secrets.token_bytes(32)
                write_key_file(pending, fresh)
                keyring = KeyRing(MasterKey(fresh), current.current)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = make_engine(
            settings.resolved_database_url, sqlite_synchronous=settings.sqlite_synchronous
        )
        try:
            attach_keyring(engine, keyring)
            upgrade_database(engine)
            result = rotate_master_key(
                session_factory=make_session_factory(engine), keyring=keyring
            )
        finally:
            engine.dispose()
    except LedgerError as exc:
        stderr.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(code=1) from None
    if pending is not None:
        os.replace(pending, key_file(settings))
        where = f"it replaced {key_file(settings)}"
    else:
        where = f"set CRM_LEDGER_MASTER_KEY to the content of {new_key_file} before restarting"
    stderr.print(
        f"Re-wrapped {result.data_keys} data keys, {result.answers} stored answers and "
        f"{result.secrets} shop and webhook secrets under master key "
        f"{keyring.current.key_id.hex()}; {where}."
    )


LogLevelOption = Annotated[str, typer.Option("--log-level", help="debug, info, warning or error")]
LogFormatOption = Annotated[
    LogFormat | None,
    typer.Option(
        "--log-format",
        help="text, or json: one ECS object per line for Splunk/ELK; default "
        "CRM_LEDGER_LOG_FORMAT or text",
        case_sensitive=False,
    ),
]


def _configure_logging(level: str, log_format: LogFormat | None, settings: Settings) -> None:
    """Service logging in `--log-format`, else the setting (`crm_ledger.observability.logs`)."""
    configure_logging(level=level, log_format=log_format or settings.log_format)


@app.command("serve")
def serve(
    data_dir: DataDirOption = None,
    host: Annotated[str | None, typer.Option("--host", help="default 127.0.0.1")] = None,
    port: Annotated[int | None, typer.Option("--port", help="default 8000")] = None,
    log_level: LogLevelOption = "info",
    tls_certfile: Annotated[
        Path | None,
        typer.Option(
            "--tls-certfile",
            help="PEM certificate (chain): serve HTTPS; default CRM_LEDGER_TLS_CERTFILE",
            dir_okay=False,
            exists=True,
        ),
    ] = None,
    tls_keyfile: Annotated[
        Path | None,
        typer.Option(
            "--tls-keyfile",
            help="PEM private key of the certificate; default CRM_LEDGER_TLS_KEYFILE",
            dir_okay=False,
            exists=True,
        ),
    ] = None,
    log_format: LogFormatOption = None,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            help="API processes on the port (one anchorer, indexer... among them); "
            "docs/deployment.md says when to raise it",
        ),
    ] = 1,
) -> None:
    """Run the service: REST API, anchorer, and (without CRM_LEDGER_RPC_URL) a local Anvil."""
    from crm_ledger import serving

    settings = _settings(data_dir)
    certfile = tls_certfile or settings.tls_certfile
    keyfile = tls_keyfile or settings.tls_keyfile
    if (certfile is None) != (keyfile is None):
        stderr.print("[red]HTTPS needs both --tls-certfile and --tls-keyfile[/red]")
        raise typer.Exit(code=2)
    try:
        serving.serve(
            settings,
            host=host or settings.host,
            port=port or settings.port,
            workers=workers,
            log_level=log_level,
            log_format=log_format,
            tls=(certfile, keyfile) if certfile and keyfile else None,
        )
    except LedgerError as exc:  # the embedded Anvil could not start (its port taken...)
        stderr.print(f"[red]cannot start the service:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None


worker_app = typer.Typer(help="Run one background role without the API.", no_args_is_help=True)
app.add_typer(worker_app, name="worker")


def _run_worker_alone(
    name: str,
    data_dir: Path | None,
    log_level: str,
    log_format: LogFormat | None,
    *,
    with_parent: bool = False,
) -> None:
    """Run the background worker `name` alone until SIGINT/SIGTERM (a singleton: extra copies,
    and the one inside `serve`, stand by until the lock frees); `with_parent`: also until
    stdin closes (`serve` runs it so: `serving.WorkerProcess`).

    Exits 2 when the settings do not enable it, 1 when it halts (the message says why), 0 on a
    signal.
    """
    from crm_ledger.runtime import Runtime
    from crm_ledger.serving import tune_garbage_collector
    from crm_ledger.workers import WorkerState

    settings = _settings(data_dir)
    _configure_logging(log_level, log_format, settings)
    engine = _migrated_engine(settings)
    runtime = Runtime(
        settings=settings, engine=engine, session_factory=make_session_factory(engine), only=name
    )
    if not runtime.supervisor.names:
        engine.dispose()
        typer.echo(f"the {name} worker is not enabled by the settings (see the README)", err=True)
        raise typer.Exit(2)

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if with_parent:
            stdin = sys.stdin.fileno()
            loop.add_reader(stdin, _stop_when_closed, loop, stdin, stop)
        await runtime.start()
        waits: list[asyncio.Future[object]] = [asyncio.ensure_future(stop.wait())]
        # `serve`'s child waits for `serve` even when every worker halted, so that `/readyz`
        # shows why (a child that exited would be started again, and halt again).
        if not with_parent:
            waits.append(asyncio.ensure_future(runtime.wait()))
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for wait in waits:
            wait.cancel()
        await runtime.stop()
        halted = {
            worker: status["message"]
            for worker, status in runtime.supervisor.status().items()
            if status["state"] == WorkerState.HALTED
        }
        for worker, message in halted.items():
            typer.echo(f"{worker} halted: {message}", err=True)
        return 1 if halted else 0

    tune_garbage_collector()
    try:
        code = asyncio.run(run())
    finally:
        engine.dispose()
    raise typer.Exit(code)


def _stop_when_closed(loop: asyncio.AbstractEventLoop, fd: int, stop: asyncio.Event) -> None:
    """`fd` is readable: at its end (the parent's end of the pipe closed), set `stop`."""
    if not os.read(fd, 4096):
        loop.remove_reader(fd)
        stop.set()


#: The chain workers' commands: command name -> (worker name, what it is).
_CHAIN_WORKER_COMMANDS = {
    "anchor": ("anchorer", "the anchorer: cuts the journal into batches and anchors them"),
    "index": (
        "indexer",
        "the chain indexer and its reconciliations (follows CRM_LEDGER_RPC_URL, or else "
        "the Anvil a `crm-ledger serve` on the same data directory started)",
    ),
    "loyalty": (
        "loyalty",
        "loyalty issuance: earnings, awards, redemptions and expiries onto the token",
    ),
    "chain": (
        "chain",  # runtime.CHAIN_WORKERS
        "the anchorer, the indexer and loyalty issuance together, on one chain connection "
        "(what `serve` runs in its chain process; each as the CRM_LEDGER_RUN_* settings say)",
    ),
}


def _add_worker_command(command_name: str, worker_name: str, help_text: str) -> None:
    def command(
        data_dir: DataDirOption = None,
        log_level: LogLevelOption = "info",
        log_format: LogFormatOption = None,
        with_parent: Annotated[
            bool,
            typer.Option(
                "--with-parent", hidden=True, help="also stop when stdin closes (serve's child)"
            ),
        ] = False,
    ) -> None:
        _run_worker_alone(worker_name, data_dir, log_level, log_format, with_parent=with_parent)

    command.__doc__ = f"Run only {help_text} (a singleton: extra copies stand by)."
    worker_app.command(command_name)(command)


def _add_worker_commands() -> None:
    from crm_ledger.roles import ROLES

    for command_name, (worker_name, help_text) in _CHAIN_WORKER_COMMANDS.items():
        _add_worker_command(command_name, worker_name, help_text)
    for name in ROLES:
        _add_worker_command(name, name, f"the {name} worker")


_add_worker_commands()


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


if __name__ == "__main__":  # `python -m crm_ledger.cli`: how `serve` starts its worker processes
    app()
