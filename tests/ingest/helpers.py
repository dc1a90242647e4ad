"""Sending signed deliveries and reading what the ledger holds afterwards."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.db.models import Customer, IngestDelivery, IngestOrder, Record
from crm_ledger.journal.customers import personal_fields
from crm_ledger.journal.privacy import PersonalFields
from tests.apps import TestClient
from tests.ingest.conftest import webhook_path
from tests.ingest.shops import body_of, shopify_headers, woo_headers


def send_shopify(
    client: TestClient, source: dict[str, Any], topic: str, document: dict[str, Any], **kw: Any
) -> dict[str, Any]:
    """Post a signed Shopify delivery; returns the answer."""
    body = body_of(document)
    response = client.post(
        webhook_path(source), content=body, headers=shopify_headers(body, topic, **kw)
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def send_woo(
    client: TestClient, source: dict[str, Any], topic: str, document: dict[str, Any]
) -> dict[str, Any]:
    """Post a signed WooCommerce delivery; returns the answer."""
    body = body_of(document)
    response = client.post(webhook_path(source), content=body, headers=woo_headers(body, topic))
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def order_bodies(session_factory: sessionmaker[Session]) -> list[dict[str, Any]]:
    """The body of every order record, in journal order."""
    with session_factory() as session:
        contents = session.scalars(
            select(Record.content).where(Record.kind == 2).order_by(Record.pk)
        )
        return [json.loads(content)["body"] for content in contents if content is not None]


def records_of(session_factory: sessionmaker[Session], customer_pk: int) -> list[Record]:
    """A customer's records, in journal order."""
    with session_factory() as session:
        return list(
            session.scalars(
                select(Record).where(Record.customer_pk == customer_pk).order_by(Record.pk)
            )
        )


def customers(session_factory: sessionmaker[Session]) -> list[Customer]:
    """Every customer."""
    with session_factory() as session:
        return list(session.scalars(select(Customer).order_by(Customer.pk)))


def deliveries(session_factory: sessionmaker[Session]) -> list[IngestDelivery]:
    """Every stored delivery."""
    with session_factory() as session:
        return list(session.scalars(select(IngestDelivery).order_by(IngestDelivery.pk)))


def orders(session_factory: sessionmaker[Session]) -> list[IngestOrder]:
    """Every shop order."""
    with session_factory() as session:
        return list(session.scalars(select(IngestOrder).order_by(IngestOrder.pk)))


def personal(session_factory: sessionmaker[Session], customer: Customer) -> PersonalFields:
    """The customer's name, email and phone as the journal opens them (all None once erased)."""
    with session_factory() as session:
        return personal_fields(session, customer)
