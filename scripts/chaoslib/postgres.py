"""The `postgres` scenario: a throwaway PostgreSQL cluster restarted -m immediate under load."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .harness import HOST, Outcome, external_anvil, free_port, loaded_service, wait_until
from .ledger import finish


@contextlib.contextmanager
def throwaway_postgres(work: Path) -> Iterator[tuple[str, Callable[[], None]]]:
    """A PostgreSQL cluster of its own on a free port: (URL, restart -m immediate)."""
    data = work / "pgdata"
    data.mkdir()
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root
        shutil.chown(work, "postgres")
        shutil.chown(data, "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    run = lambda *args: subprocess.run(  # noqa: E731
        [*as_postgres, *args], check=True, capture_output=True, timeout=120
    )
    run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    options = f"-p {port} -k {work} -c listen_addresses={HOST} -c fsync=on"
    pg_ctl = ["pg_ctl", "-D", str(data), "-l", str(work / "postgres.log"), "-o", options, "-w"]
    run(*pg_ctl, "start")
    try:
        yield (
            f"postgresql+psycopg://postgres@{HOST}:{port}/postgres",
            lambda: run(*pg_ctl, "-m", "immediate", "restart"),
        )
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            run(*pg_ctl, "-m", "immediate", "stop")


def scenario_postgres(work: Path, *, restarts: int) -> Outcome:
    """PostgreSQL restarted (-m immediate: a crash and recovery) `restarts` times under load."""
    outcome = Outcome("PostgreSQL restarted", notes=[f"{restarts} restarts"])
    with throwaway_postgres(work) as (database_url, restart), external_anvil() as chain:
        env = {
            "CRM_LEDGER_DATA_DIR": str(work / "data"),
            "CRM_LEDGER_DATABASE_URL": database_url,
            "CRM_LEDGER_RPC_URL": chain.rpc_url,
        }
        with loaded_service(env, max_writes=100_000) as (service, writer):
            recoveries = []
            for _ in range(restarts):
                time.sleep(random.uniform(0.5, 1.5))
                restart()
                back_at = time.monotonic()
                wait_until(
                    lambda at=back_at: writer.acknowledged_after(at), 60, "a write after restart"
                )
                recoveries.append(time.monotonic() - back_at)
            time.sleep(0.5)
            writer.stop()
            outcome.recovery_seconds = max(recoveries)
            outcome.server_errors += service.server_errors_counted()
            return finish(
                outcome, writer, database_url, chain.rpc_url, settle_timeout=120, service=service
            )
