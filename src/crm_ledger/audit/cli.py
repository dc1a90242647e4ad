"""`crm-ledger audit`, `export`, `digest` and `verify`: auditing from the command line.

    crm-ledger audit [--rpc URL] [--json] [--data-dir DIR]        the whole ledger vs the chain
    crm-ledger export [--customer ID | --from-seq N --to-seq M] [--no-keys] [-o FILE]
    crm-ledger digest [-o FILE]                                    the current head, to keep
    crm-ledger verify [BUNDLE] --rpc URL [--contract ADDR] [--since DIGEST_FILE] [--json]

`audit`, `export` and `digest` read the journal. `verify` reads nothing but its files and the
chain's JSON-RPC: it runs the `crm_ledger.verifier` package (and `audit.chain` for the node),
which imports no database code, and the journal's modules are imported here only inside the
commands that need them.

Exit codes: 0 when everything holds, 1 when a check failed (the failures are listed), 2 when
the check could not be made (unreadable input, unreachable chain).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from crm_ledger.audit.chain import RpcChainProvider
from crm_ledger.config import Settings
from crm_ledger.errors import ChainError, FormatError, LedgerError
from crm_ledger.verifier.chain import ChainFor
from crm_ledger.verifier.check import BundleCheck, verify_bundle
from crm_ledger.verifier.digest import Digest, SinceCheck, verify_since

# soft_wrap: long hashes and messages stay on one line, greppable, whatever the terminal width.
stderr = Console(stderr=True, highlight=False, soft_wrap=True)

EXIT_OK, EXIT_FAILED, EXIT_UNUSABLE = 0, 1, 2
#: How many failures are printed (all are counted).
SHOWN_FAILURES = 50
RPC_TIMEOUT_SECONDS = 10.0

DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Data directory (SQLite journal); default CRM_LEDGER_DATA_DIR or ./data",
        file_okay=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
OutputOption = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="Write to this file instead of stdout.", dir_okay=False),
]


def register(app: typer.Typer) -> None:
    """Add the auditing commands to the `crm-ledger` app."""
    app.command("audit")(audit)
    app.command("export")(export)
    app.command("digest")(digest)
    app.command("verify")(verify)


def _die(message: str, code: int = EXIT_UNUSABLE) -> NoReturn:
    stderr.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(code=code)


def _settings(data_dir: Path | None) -> Settings:
    return Settings(data_dir=data_dir) if data_dir is not None else Settings()


@contextmanager
def _journal(data_dir: Path | None) -> Iterator[tuple[Settings, Any]]:
    """Settings and the migrated journal engine of `data_dir`."""
    from crm_ledger.db.session import make_engine, upgrade_database
    from crm_ledger.journal.privacy import attach_keyring, load_keyring

    settings = _settings(data_dir)
    engine = make_engine(
        settings.resolved_database_url, sqlite_synchronous=settings.sqlite_synchronous
    )
    attach_keyring(engine, load_keyring(settings))
    try:
        upgrade_database(engine)
        yield settings, engine
    finally:
        engine.dispose()


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=stderr,
        transient=True,
    )


# audit -------------------------------------------------------------------------------------


def audit(
    rpc: Annotated[
        str | None,
        typer.Option(
            "--rpc",
            help="JSON-RPC URL of the chain; default CRM_LEDGER_RPC_URL, else the service's "
            "own Anvil on CRM_LEDGER_ANVIL_PORT",
        ),
    ] = None,
    as_json: JsonOption = False,
    data_dir: DataDirOption = None,
) -> None:
    """Audit the whole ledger: recompute every leaf, root and head and compare with the chain.

    The report is stored: GET /v1/audit/ledger shows it. Exits 1 when anything differs.
    """
    from crm_ledger.audit.chain import default_rpc_url
    from crm_ledger.audit.ledger import count_sequenced
    from crm_ledger.audit.reports import run_stored_audit, start_report

    with _journal(data_dir) as (settings, engine):
        provider = RpcChainProvider(
            rpc_url=rpc or default_rpc_url(settings), timeout=settings.rpc_timeout_seconds
        )
        total = count_sequenced(engine)
        stored, _started = start_report(engine, force=True)
        with _progress() as progress:
            task = progress.add_task("auditing records", total=total)

            def advance(done: int) -> None:
                progress.update(task, completed=done)

            try:
                report = asyncio.run(
                    run_stored_audit(
                        engine=engine, provider=provider, report_id=stored.id, progress=advance
                    )
                )
            except ChainError as exc:
                _die(
                    f"{exc}. Start the service (`crm-ledger serve`) or pass --rpc with the "
                    "chain's URL."
                )
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        chain = report.chain
        stderr.print(
            f"Audited {report.records_checked:,} records in {report.batches_checked:,} batches "
            f"({report.erased_records:,} erased, {report.pending_records:,} pending) in "
            f"{report.seconds:.1f} s, against chain {chain.get('chain_id')} contract "
            f"{chain.get('contract')} (epoch {chain.get('epoch')})."
        )
        for finding in report.discrepancies[:SHOWN_FAILURES]:
            where = (
                f"seq {finding.seq}"
                if finding.seq is not None
                else f"batch {finding.batch_id}"
                if finding.batch_id is not None
                else "ledger"
            )
            stderr.print(f"  [red]{finding.kind.value}[/red] {where}: {escape(finding.detail)}")
        hidden = report.discrepancy_count - min(len(report.discrepancies), SHOWN_FAILURES)
        if hidden > 0:
            stderr.print(f"  … and {hidden:,} more (see --json or GET /v1/audit/ledger)")
        if report.clean:
            stderr.print("[green]Clean:[/green] the journal and the chain agree.")
        else:
            stderr.print(f"[red]{report.discrepancy_count:,} discrepancies.[/red]")
    raise typer.Exit(code=EXIT_OK if report.clean else EXIT_FAILED)


# export and digest -------------------------------------------------------------------------


def export(
    target: Annotated[
        str | None,
        typer.Argument(
            help="`salesforce`: write a Data Loader / Bulk API CSV instead of a bundle.",
            show_default=False,
        ),
    ] = None,
    object_name: Annotated[
        str, typer.Option("--object", help="With `salesforce`: the object (Contact).")
    ] = "Contact",
    customer: Annotated[
        str | None, typer.Option("--customer", help="Only this customer's records.")
    ] = None,
    from_seq: Annotated[
        int | None, typer.Option("--from-seq", min=0, help="First seq of a range.")
    ] = None,
    to_seq: Annotated[
        int | None, typer.Option("--to-seq", min=0, help="Last seq of a range.")
    ] = None,
    no_keys: Annotated[
        bool, typer.Option("--no-keys", help="Leave customers' keys out of the bundle.")
    ] = False,
    output: OutputOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Write a self-contained bundle (JSON Lines) that `crm-ledger verify` checks offline.

    Without --customer or a range, the bundle holds the whole anchored ledger. It includes
    customers' keys unless --no-keys: hand it only to auditors. `export salesforce --object
    Contact` writes the Salesforce Contact fields as a Data Loader / Bulk API CSV instead.
    """
    from crm_ledger.audit.export import open_export
    from crm_ledger.verifier.bundle import Scope

    if target is not None:
        from crm_ledger.outbound.salesforce.cli import export_salesforce

        if target != "salesforce":
            _die(
                f"unknown export target {target!r}: the only target is `salesforce` "
                "(or none, for an audit bundle)"
            )
        rows = export_salesforce(object_name=object_name, output=output, data_dir=data_dir)
        stderr.print(f"Wrote {rows:,} {object_name} rows" + (f" to {output}" if output else ""))
        return
    if customer is not None and (from_seq is not None or to_seq is not None):
        _die("give either --customer or --from-seq/--to-seq, not both")
    if customer is not None:
        scope = Scope("customer", customer_id=customer)
    elif from_seq is not None or to_seq is not None:
        start, stop = from_seq or 0, to_seq if to_seq is not None else 2**63 - 1
        if stop < start:
            _die(f"--to-seq {stop} is before --from-seq {start}")
        scope = Scope("range", from_seq=start, to_seq=stop)
    else:
        scope = Scope("all")
    with _journal(data_dir) as (_, engine):
        try:
            bundle = open_export(engine, scope=scope, include_keys=not no_keys)
        except LedgerError as exc:
            _die(getattr(exc, "detail", str(exc)))
        header = bundle.header
        with _writer(output) as write:
            for line in bundle.lines():
                write(line)
    stderr.print(
        f"Wrote a bundle of {header.records:,} records in {header.batches:,} batches"
        + (f" with {header.keys:,} keys" if header.includes_keys else ", without keys")
        + (f" to {output}" if output else "")
        + ". Verify it with `crm-ledger verify BUNDLE --rpc URL`."
    )


def digest(output: OutputOption = None, data_dir: DataDirOption = None) -> None:
    """Print the ledger's current digest; keep it to check later with `verify --since`."""
    from crm_ledger.audit.export import ledger_digest

    with _journal(data_dir) as (_, engine):
        found = ledger_digest(engine)
    if found is None:
        _die("nothing is anchored yet, so the ledger has no digest", EXIT_FAILED)
    with _writer(output) as write:
        write(json.dumps(found.to_json(), indent=2).encode() + b"\n")


@contextmanager
def _writer(output: Path | None) -> Iterator[Callable[[bytes], Any]]:
    if output is None:
        yield sys.stdout.buffer.write
        sys.stdout.buffer.flush()
        return
    partial = output.with_name(output.name + ".partial")
    with partial.open("wb") as handle:
        yield handle.write
    partial.replace(output)


# verify ------------------------------------------------------------------------------------


def verify(
    bundle: Annotated[
        Path | None,
        typer.Argument(
            help="A bundle from `crm-ledger export` or GET /v1/audit/export.", dir_okay=False
        ),
    ] = None,
    rpc: Annotated[
        str | None,
        typer.Option("--rpc", help="JSON-RPC URL of the chain the ledger is anchored on."),
    ] = None,
    contract: Annotated[
        str | None,
        typer.Option(
            "--contract",
            help="The AuditLedger address you trust (as the operator publishes it); without "
            "it, the address the bundle or digest names is taken as given",
        ),
    ] = None,
    since: Annotated[
        Path | None,
        typer.Option(
            "--since",
            help="A digest saved earlier (GET /v1/audit/digest): prove the ledger extends it.",
            dir_okay=False,
        ),
    ] = None,
    offline: Annotated[
        bool, typer.Option("--offline", help="Check the bundle alone, without the chain.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Check a bundle (and/or that the ledger extends a saved digest) with only the chain.

    Trusts nothing the service says: only the bundle's bytes and the chain's JSON-RPC.
    Exits 0 when everything holds, 1 with the list of failures otherwise, 2 on unusable input.
    """
    if bundle is None and since is None:
        _die("give a BUNDLE to verify, or --since DIGEST_FILE, or both")
    if rpc is None and not (offline and since is None):
        _die("--rpc URL is needed to check against the chain (or --offline for a bundle alone)")
    if contract is not None and not _is_address(contract):
        _die(f"--contract {contract!r} is not an address (0x and 40 hex digits)")
    saved = _read_digest(since) if since is not None else None
    if bundle is not None and not bundle.is_file():
        _die(f"no bundle at {bundle}")
    try:
        bundle_check, since_check = asyncio.run(
            _verify(
                bundle,
                saved,
                rpc=None if offline and since is None else rpc,
                contract=contract,
                offline=offline,
            )
        )
    except FormatError as exc:
        _die(f"{bundle}: {exc}" if bundle is not None else str(exc))
    except ChainError as exc:
        _die(str(exc))
    failures = (bundle_check.failures if bundle_check else []) + (
        since_check.failures if since_check else []
    )
    failure_count = (bundle_check.failure_count if bundle_check else 0) + len(
        since_check.failures if since_check else []
    )
    if as_json:
        typer.echo(json.dumps(_verify_json(bundle_check, since_check), indent=2))
    else:
        _print_verify(bundle_check, since_check, offline=offline)
        for failure in failures[:SHOWN_FAILURES]:
            stderr.print(f"  [red]✗[/red] {escape(failure)}")
        if failure_count > SHOWN_FAILURES:
            stderr.print(f"  … and {failure_count - SHOWN_FAILURES:,} more (see --json)")
        if failure_count:
            stderr.print(f"[red]FAILED:[/red] {failure_count:,} checks did not hold.")
        else:
            stderr.print("[green]OK:[/green] every check held.")
    raise typer.Exit(code=EXIT_FAILED if failure_count else EXIT_OK)


async def _verify(
    bundle: Path | None,
    saved: Digest | None,
    *,
    rpc: str | None,
    contract: str | None,
    offline: bool,
) -> tuple[BundleCheck | None, SinceCheck | None]:
    bundle_check = since_check = None
    if rpc is None:
        assert bundle is not None
        return await _verify_bundle(bundle, chain_for=None, contract=contract), None
    async with RpcChainProvider(rpc_url=rpc, timeout=RPC_TIMEOUT_SECONDS).connect() as chain_for:
        if bundle is not None:
            bundle_check = await _verify_bundle(
                bundle, chain_for=None if offline else chain_for, contract=contract
            )
        if saved is not None:
            address = contract or saved.chain.contract
            since_check = await verify_since(chain_for(address), saved, address=address)
    return bundle_check, since_check


async def _verify_bundle(
    bundle: Path, *, chain_for: ChainFor | None, contract: str | None
) -> BundleCheck:
    with _progress() as progress:
        task = progress.add_task("verifying records", total=None)
        return await verify_bundle(
            bundle,
            chain_for=chain_for,
            contract=contract,
            progress=lambda done: progress.update(task, completed=done),
        )


def _read_digest(path: Path) -> Digest:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        _die(f"cannot read the digest {path}: {exc.strerror}")
    except UnicodeDecodeError:
        _die(f"{path} is not a digest: it is not UTF-8 text")
    try:
        return Digest.from_json(json.loads(text))
    except ValueError as exc:
        reason = str(exc) if isinstance(exc, FormatError) else "it is not JSON"
        _die(f"{path} is not a usable digest: {reason}")


def _is_address(value: str) -> bool:
    digits = value[2:]
    return (
        value.startswith("0x")
        and len(digits) == 40
        and all(c in "0123456789abcdefABCDEF" for c in digits)
    )


def _print_verify(
    bundle_check: BundleCheck | None, since_check: SinceCheck | None, *, offline: bool
) -> None:
    if bundle_check is not None and bundle_check.header is not None:
        header = bundle_check.header
        scope = header.scope
        what = {
            "all": "the whole ledger",
            "customer": f"customer {scope.customer_id}",
            "range": f"seqs {scope.from_seq} to {scope.to_seq}",
        }[scope.kind]
        stderr.print(
            f"Bundle of {what}, exported {header.created_at}: {bundle_check.records:,} records "
            f"in {bundle_check.batches:,} batches; {bundle_check.commitments_checked:,} "
            f"commitments checked, {bundle_check.erased:,} erased, "
            f"{bundle_check.content_unchecked:,} without content or key; "
            + (
                "not checked on chain (--offline)"
                if offline
                else f"{bundle_check.batches_on_chain:,} batches confirmed on chain"
            )
            + f" ({bundle_check.seconds:.1f} s)."
        )
        for note in bundle_check.notes:
            stderr.print(f"  note: {escape(note)}")
    if since_check is not None:
        if since_check.ok:
            stderr.print(
                f"The ledger extends the digest: {since_check.batches_added:,} batches and "
                f"{since_check.records_added:,} records since, head now "
                f"0x{since_check.head.hex() if since_check.head else ''} (batch "
                f"{since_check.last_batch_id})."
            )
        for note in since_check.notes:
            stderr.print(f"  note: {escape(note)}")


def _verify_json(
    bundle_check: BundleCheck | None, since_check: SinceCheck | None
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if bundle_check is not None:
        out["bundle"] = {
            "ok": bundle_check.ok,
            "records": bundle_check.records,
            "batches": bundle_check.batches,
            "batches_on_chain": bundle_check.batches_on_chain,
            "commitments_checked": bundle_check.commitments_checked,
            "erased": bundle_check.erased,
            "content_unchecked": bundle_check.content_unchecked,
            "failure_count": bundle_check.failure_count,
            "failures": bundle_check.failures,
            "notes": bundle_check.notes,
        }
    if since_check is not None:
        out["since"] = {
            "extends": since_check.ok,
            "failures": since_check.failures,
            "notes": since_check.notes,
            "batches_added": since_check.batches_added,
            "records_added": since_check.records_added,
            "head": "0x" + since_check.head.hex() if since_check.head else None,
        }
    return out
