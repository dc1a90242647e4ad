"""Importing the client loads neither FastAPI, SQLAlchemy nor web3, nor the service's modules,
nor anything requirements-client.txt does not install (cryptography: the shops' signatures)."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = (
    "fastapi",
    "starlette",
    "sqlalchemy",
    "alembic",
    "web3",
    "aiohttp",
    "uvicorn",
    "cryptography",
    "nats",
)
SERVICE = (
    "crm_ledger.db",
    "crm_ledger.api",
    "crm_ledger.app",
    "crm_ledger.chain",
    "crm_ledger.journal.records",
    "crm_ledger.audit",
    "crm_ledger.config",
    "crm_ledger.feed",
    "crm_ledger.ingest.signatures",
    "crm_ledger.outbound.webhooks.subscriptions",
)


def test_importing_the_client_loads_no_server_code() -> None:
    program = (
        "import json, sys\n"
        "import crm_ledger.client\n"
        "from crm_ledger.client import Client, AsyncClient, Receipt\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    loaded = json.loads(
        subprocess.run(
            [sys.executable, "-c", program], check=True, capture_output=True, text=True
        ).stdout
    )
    assert "crm_ledger.client" in loaded and "httpx" in loaded
    assert [m for m in loaded if m.split(".")[0] in FORBIDDEN] == []
    assert [m for m in loaded if m.startswith(SERVICE)] == []
