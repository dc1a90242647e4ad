"""`crm-ledger serve --tls-certfile --tls-keyfile` serves HTTPS with the given certificate
(issue 10, part 5); the certificate is one this test makes."""

from __future__ import annotations

import ipaddress
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from crm_ledger.db.session import make_engine, make_session_factory, upgrade_database
from crm_ledger.journal.keys import Role, create_api_key
from tests.e2e.conftest import free_port
from tests.waiting import wait_for


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "crm-ledger test")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def https_service(tmp_path: Path, database_url: str) -> Iterator[tuple[str, Path, str]]:
    """`crm-ledger serve` over HTTPS (no chain: an RPC URL nothing answers); its base URL, the
    certificate and an admin key."""
    cert, key = self_signed(tmp_path)
    engine = make_engine(database_url)
    upgrade_database(engine)
    with make_session_factory(engine).begin() as session:
        api_key = create_api_key(session, role=Role.ADMIN, label="tls test")
    engine.dispose()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_LEDGER_")}
    env.update(
        CRM_LEDGER_DATA_DIR=str(tmp_path / "data"),
        CRM_LEDGER_DATABASE_URL=database_url,
        CRM_LEDGER_RPC_URL=f"http://127.0.0.1:{free_port()}",
    )
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "crm-ledger"),
            "serve",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--tls-certfile",
            str(cert),
            "--tls-keyfile",
            str(key),
        ],
        env=env,
    )
    base = f"https://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return httpx.get(f"{base}/healthz", verify=ssl_context(cert), timeout=2).is_success
        except httpx.HTTPError:
            return False

    try:
        wait_for(answers, 60)
        yield base, cert, api_key
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def ssl_context(cert: Path) -> ssl.SSLContext:
    """A client context that trusts `cert` only."""
    return ssl.create_default_context(cafile=str(cert))


def test_the_api_answers_over_https_with_the_given_certificate(
    https_service: tuple[str, Path, str],
) -> None:
    base, cert, api_key = https_service

    with httpx.Client(base_url=base, verify=ssl_context(cert)) as client:
        created = client.post(
            "/v1/customers",
            json={"name": "Ada Lovelace", "email": "ada@example.com"},
            headers={"Authorization": f"Bearer {api_key}"},
        )
        assert created.status_code == 201, created.text
        assert client.get("/healthz").json() == {"status": "ok"}


def test_plain_http_and_untrusted_clients_get_nothing(
    https_service: tuple[str, Path, str],
) -> None:
    base, _, _ = https_service

    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base}/healthz")  # the system trust store does not know the certificate
    with pytest.raises(httpx.HTTPError):
        httpx.get(base.replace("https://", "http://") + "/healthz")
