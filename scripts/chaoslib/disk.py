"""The `disk` scenario: the SQLite journal on a small tmpfs that is filled under load."""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path

from sqlalchemy import func, select, text

from crm_ledger.db.models import Record
from crm_ledger.db.session import make_engine

from .harness import Outcome, external_anvil, loaded_service, wait_until
from .ledger import finish


def scenario_disk(work: Path, *, full_seconds: float) -> Outcome:
    """The SQLite journal on a 32 MB tmpfs, filled for `full_seconds` under load."""
    outcome = Outcome("disk full (SQLite)")
    mount = work / "tmpfs"
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount)], capture_output=True
    )
    if mounted.returncode != 0:
        outcome.notes.append(f"skipped: cannot mount a tmpfs ({mounted.stderr.decode().strip()})")
        return outcome
    database_url = f"sqlite:///{mount / 'ledger.sqlite'}"
    try:
        with external_anvil() as chain:
            env = {"CRM_LEDGER_DATA_DIR": str(mount), "CRM_LEDGER_RPC_URL": chain.rpc_url}
            with loaded_service(env, max_writes=100_000) as (service, writer):
                time.sleep(1)
                filler = mount / "filler"
                with filler.open("wb") as out, contextlib.suppress(OSError):
                    while True:
                        out.write(b"\0" * (1 << 20))
                        out.flush()
                full_at = time.monotonic()
                try:
                    wait_until(lambda: writer.unavailable > 0, 30, "a 503 while the disk is full")
                except TimeoutError as exc:
                    outcome.notes.append(str(exc))
                    outcome.server_errors += 1
                acknowledged_while_full = len(writer.acknowledged)
                time.sleep(max(0.0, full_seconds - (time.monotonic() - full_at)))
                outcome.notes.append(
                    f"{writer.unavailable} answers 503 while full, "
                    f"{len(writer.acknowledged) - acknowledged_while_full} writes acknowledged "
                    "(into pages SQLite had free)"
                )
                filler.unlink()
                freed_at = time.monotonic()
                wait_until(
                    lambda: writer.acknowledged_after(freed_at), 60, "a write after space returns"
                )
                outcome.recovery_seconds = time.monotonic() - freed_at
                time.sleep(0.5)
                writer.stop()
                outcome.server_errors += service.server_errors_counted()
                finish(
                    outcome,
                    writer,
                    database_url,
                    chain.rpc_url,
                    settle_timeout=120,
                    service=service,
                )
            engine = make_engine(database_url)
            with engine.connect() as conn:
                integrity = conn.scalar(text("PRAGMA integrity_check"))
                count = conn.scalar(select(func.count()).select_from(Record))
            engine.dispose()
            if integrity != "ok":
                outcome.notes.append(f"integrity_check: {integrity}")
                outcome.lost += 1
            # One record per acknowledged write (creating the customer writes none); any other
            # record was half-written: committed, never acknowledged, although retried.
            if count != outcome.acknowledged:
                outcome.notes.append(f"{count} records for {outcome.acknowledged} acknowledged")
                outcome.seq_gaps += abs(count - outcome.acknowledged)
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
    return outcome
