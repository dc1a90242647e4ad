"""`crm-ledger serve --log-format json`: a whole service journey on Anvil, every line parsed.

The service runs as a subprocess, with the Salesforce worker on (against the stand-in), on the
parametrised database. Personal values and secrets are planted on the way in; no log line may
carry one, every line must be one ECS JSON object, and the access lines must carry the fields
a log platform queries.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from crm_ledger.chain.node import LocalNode
from crm_ledger.config import DEV_MNEMONIC
from crm_ledger.outbound.salesforce.standin import SalesforceStandIn
from tests.chain.conftest import free_port
from tests.outbound.salesforce.conftest import (  # noqa: F401  (fixtures)
    CLIENT_ID,
    USERNAME,
    KeyPair,
    key_pair,
    standin,
)
from tests.waiting import wait_for

CLI = Path(sys.executable).parent / "crm-ledger"
#: Anvil's dev account 0 key (public knowledge, chain 31337 only): never logged all the same.
DEV_KEY_0 = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
PLANTED = {
    "name": "Zofia Plantedname",
    "email": "zofia.planted@example.com",
    "phone": "+48600700800",
    "detail": "planted-secret-detail",
    "tag": "planted-tag-value",
}
WRONG_KEY = "crml_" + "W" * 43


def _field(line: dict[str, Any], dotted: str) -> Any:
    """An ECS field, flat (`"log.level"`) or nested (`{"http": {"request": ...}}`)."""
    if dotted in line:
        return line[dotted]
    value: Any = line
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


@pytest.mark.chain
def test_a_service_journey_logs_ecs_json_without_secrets_or_personal_data(
    tmp_path: Path,
    database_url: str,
    anvil: LocalNode,
    standin: SalesforceStandIn,  # noqa: F811
    key_pair: KeyPair,  # noqa: F811
) -> None:
    key_file = tmp_path / "salesforce.pem"
    key_file.write_bytes(key_pair.private_pem)
    # The master key that wraps customers' data keys (issue 10), where this build reads it.
    master_key = base64.b64encode(os.urandom(32)).decode()
    port = free_port()
    env = {
        **os.environ,
        "CRM_LEDGER_DATA_DIR": str(tmp_path),
        "CRM_LEDGER_DATABASE_URL": database_url,
        "CRM_LEDGER_RPC_URL": anvil.rpc_url,
        "CRM_LEDGER_BATCH_MAX_AGE_SECONDS": "0.05",
        "CRM_LEDGER_RUN_SALESFORCE_SYNC": "true",
        "CRM_LEDGER_SALESFORCE_LOGIN_URL": standin.base_url,
        "CRM_LEDGER_SALESFORCE_CLIENT_ID": CLIENT_ID,
        "CRM_LEDGER_SALESFORCE_USERNAME": USERNAME,
        "CRM_LEDGER_SALESFORCE_PRIVATE_KEY_PATH": str(key_file),
        "CRM_LEDGER_SALESFORCE_POLL_SECONDS": "0.05",
        "CRM_LEDGER_MASTER_KEY": master_key,
    }
    created = subprocess.run(
        [str(CLI), "keys", "create", "--role", "admin"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    api_key = created.stdout.strip()
    service = subprocess.Popen(
        [str(CLI), "serve", "--port", str(port), "--log-format", "json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {api_key}"}
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=30) as client:

            def up() -> bool:
                try:
                    return client.get("/readyz").json()["chain"]["state"] == "running"
                except (httpx.HTTPError, ValueError, KeyError):
                    return False

            wait_for(up, 120)
            traced = client.post(
                "/v1/customers",
                json={
                    "name": PLANTED["name"],
                    "email": PLANTED["email"],
                    "phone": PLANTED["phone"],
                    "tags": [PLANTED["tag"]],
                },
                headers={"X-Request-ID": "trace-abc-123", "Idempotency-Key": "json-logs-1"},
            )
            assert traced.status_code == 201, traced.text
            assert traced.headers["X-Request-ID"] == "trace-abc-123"
            customer = traced.json()["id"]
            interaction = client.post(
                "/v1/interactions",
                json={
                    "customer_id": customer,
                    "type": "support_call",
                    "channel": "phone",
                    "occurred_at": "2026-11-25T10:00:00Z",
                    "details": {"note": PLANTED["detail"], "email": PLANTED["email"]},
                },
                headers={"X-Request-ID": "bad id with spaces"},
            )
            assert interaction.status_code == 201, interaction.text
            generated = interaction.headers["X-Request-ID"]
            assert generated != "bad id with spaces" and len(generated) == 32
            record = interaction.json()["id"]
            assert client.get(f"/v1/crm/customers/{customer}").status_code == 200
            assert client.get("/v1/crm/customers", params={"q": PLANTED["name"]}).status_code == 200
            # A personal value typed into a path, and a key that is not one.
            assert client.get(f"/v1/customers/{PLANTED['email']}").status_code == 422
            wrong = client.get("/v1/customers", headers={"Authorization": f"Bearer {WRONG_KEY}"})
            assert wrong.status_code == 401
            wait_for(lambda: client.get(f"/v1/records/{record}/receipt").status_code == 200, 60)
            wait_for(lambda: customer in standin.contacts, 60)
            erased = client.delete(f"/v1/customers/{customer}/personal-data")
            assert erased.status_code == 200, erased.text
            assert client.get("/metrics").status_code == 200
    finally:
        service.send_signal(signal.SIGTERM)
        try:
            stdout, stderr = service.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            service.kill()
            stdout, stderr = service.communicate()
    # uvicorn ends by raising the SIGTERM it handled again.
    assert service.returncode in (0, -signal.SIGTERM), stderr[-3000:]
    assert "Application shutdown complete." in stderr

    lines = [line for line in (stdout + stderr).splitlines() if line.strip()]
    assert len(lines) > 10
    parsed = []
    for line in lines:
        try:
            document = json.loads(line)
        except ValueError:
            pytest.fail(f"not one JSON object per line: {line[:300]}")
        assert isinstance(document, dict), line
        for field in ("@timestamp", "log.level", "message"):
            assert _field(document, field) is not None, (field, line)
        parsed.append(document)

    pem_body = key_pair.private_pem.decode().splitlines()[1]
    secrets = [api_key, api_key[5:], WRONG_KEY, DEV_MNEMONIC, DEV_KEY_0, pem_body, master_key]
    for line in lines:
        for secret in secrets:
            assert secret not in line, f"a secret in the logs: {line[:300]}"
        for value in PLANTED.values():
            assert value not in line, f"a personal value in the logs: {line[:300]}"

    access = [d for d in parsed if _field(d, "log.logger") == "crm_ledger.access"]
    post = next(d for d in access if _field(d, "http.request.id") == "trace-abc-123")
    assert _field(post, "http.request.method") == "POST"
    assert _field(post, "url.path") == "/v1/customers"
    assert _field(post, "http.response.status_code") == 201
    assert isinstance(_field(post, "event.duration"), int) and _field(post, "event.duration") > 0
    assert _field(post, "user.roles") == ["admin"]
    key_id = _field(post, "user.id")
    assert isinstance(key_id, str) and len(key_id) == 36
    assert any(_field(d, "http.request.id") == generated for d in access)
    view = next(d for d in access if str(_field(d, "url.path")).startswith("/v1/crm/customers/"))
    assert _field(view, "url.path") == f"/v1/crm/customers/{customer}"
    typed = next(d for d in access if _field(d, "http.response.status_code") == 422)
    assert _field(typed, "url.path") == "/v1/customers/{customer_id}"
    refused = next(d for d in access if _field(d, "http.response.status_code") == 401)
    assert _field(refused, "user.id") is None
    steps = [d for d in parsed if _field(d, "event.action") == "worker-step"]
    assert any(_field(d, "labels.worker") == "salesforce" for d in steps)
    assert all(isinstance(_field(d, "event.duration"), int) for d in steps)
