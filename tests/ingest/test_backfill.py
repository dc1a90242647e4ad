"""`crm-ledger import orders FILE --source ID`: idempotent with itself and with the webhooks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from crm_ledger.cli import app as cli
from crm_ledger.ingest.worker import IngestWorker
from tests.apps import TestClient
from tests.ingest.conftest import TEST_MASTER_KEY
from tests.ingest.helpers import order_bodies, orders, send_shopify, send_woo
from tests.ingest.shops import SHOPIFY_ORDER_ID, shopify_order, woo_order

runner = CliRunner()


def run_import(database_url: str, tmp_path: Path, file: Path, source_id: str) -> Any:
    return runner.invoke(
        cli,
        ["import", "orders", str(file), "--source", source_id, "--data-dir", str(tmp_path / "d")],
        env={
            "CRM_LEDGER_DATABASE_URL": database_url,
            "CRM_LEDGER_MASTER_KEY": TEST_MASTER_KEY,
        },
    )


def write_lines(path: Path, documents: list[dict[str, Any]], *extra: str) -> Path:
    path.write_text("".join(json.dumps(d) + "\n" for d in documents) + "".join(extra))
    return path


def test_import_then_webhook_is_one_order_and_a_second_import_stores_nothing(
    client: TestClient,
    shopify: dict[str, Any],
    worker: IngestWorker,
    session_factory: sessionmaker[Session],
    database_url: str,
    tmp_path: Path,
) -> None:
    documents = [shopify_order(), shopify_order(id=SHOPIFY_ORDER_ID + 1, name="#1002")]
    file = write_lines(tmp_path / "orders.jsonl", documents)
    first = run_import(database_url, tmp_path, file, shopify["id"])
    assert first.exit_code == 0, first.stderr
    assert "2 orders read: 2 stored, 0 already stored; 2 mapped (2 records written)" in first.stderr
    again = run_import(database_url, tmp_path, file, shopify["id"])
    assert again.exit_code == 0, again.stderr
    assert "0 stored, 2 already stored" in again.stderr
    # The shop then delivers the first order by webhook, unchanged: still one record.
    send_shopify(client, shopify, "orders/updated", shopify_order())
    worker.run_once()
    assert len(orders(session_factory)) == 2
    assert len(order_bodies(session_factory)) == 2
    # A later state of it is an update of the same order.
    send_shopify(
        client,
        shopify,
        "orders/updated",
        shopify_order(fulfillment_status="fulfilled", updated_at="2026-11-26T10:00:00-05:00"),
    )
    worker.run_once()
    assert len(orders(session_factory)) == 2
    assert [b["status"] for b in order_bodies(session_factory)] == ["paid", "paid", "shipped"]


def test_malformed_lines_are_reported_and_the_rest_imported(
    client: TestClient,
    woo: dict[str, Any],
    worker: IngestWorker,
    session_factory: sessionmaker[Session],
    database_url: str,
    tmp_path: Path,
) -> None:
    file = write_lines(
        tmp_path / "woo.jsonl", [woo_order(), woo_order(id=800, currency="")], "{not json\n"
    )
    result = run_import(database_url, tmp_path, file, woo["id"])
    assert result.exit_code == 1
    assert "line 2: currency is missing" in result.stderr
    assert "line 3: the body is not valid JSON" in result.stderr
    assert len(order_bodies(session_factory)) == 1
    # Imported first, then delivered by webhook: one order.
    send_woo(client, woo, "order.updated", woo_order())
    assert worker.run_once() == 1
    assert len(orders(session_factory)) == 1
    assert len(order_bodies(session_factory)) == 1


def test_unknown_source_exits_2(database_url: str, tmp_path: Path) -> None:
    file = write_lines(tmp_path / "o.jsonl", [shopify_order()])
    result = run_import(database_url, tmp_path, file, "0b6a3c1e-4f4e-4d3c-9c1e-2f0a5b7c8d9e")
    assert result.exit_code == 2
    assert "no webhook source" in result.stderr
