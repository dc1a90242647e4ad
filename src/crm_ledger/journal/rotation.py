"""Master key rotation: every data key re-wrapped under a new master key, records untouched.

Exports: `RotationResult`, `rotate_master_key`.

Only what the master key seals changes: each customer's wrapped data key (the data key itself,
and so the sealed personal fields, stay as they are), the email blind index (its key derives
from the master key), the stored idempotent answers and the secrets kept for others (shop
source secrets, webhook signing secrets). Journal records, commitments and leaves are not read
or written. Rows are re-wrapped a chunk per transaction, so a rotation that
stops half-way leaves every row under the old or the new key; the key ring opens both, and
running the rotation again finishes it (rows already under the new key are skipped).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.db.models import Customer, IdempotencyEntry, IngestSource, WebhookSubscription
from crm_ledger.journal.privacy import (
    KeyRing,
    SecretPurpose,
    open_personal,
    open_response,
    open_secret,
    seal_response,
    seal_secret,
    unwrap_data_key,
    wrap_data_key,
    wrapped_under,
)

_CHUNK = 500

#: Every column that holds a secret sealed by `seal_secret`, with the purpose it was sealed for;
#: each row's public `id` is what its secrets are bound to.
_Holder = type[IngestSource] | type[WebhookSubscription]
SEALED_SECRETS: tuple[tuple[_Holder, str, SecretPurpose], ...] = (
    (IngestSource, "secret_ciphertext", SecretPurpose.SHOP_SOURCE),
    (IngestSource, "previous_secret_ciphertext", SecretPurpose.SHOP_SOURCE),
    (WebhookSubscription, "secret", SecretPurpose.WEBHOOK_SIGNING),
    (WebhookSubscription, "previous_secret", SecretPurpose.WEBHOOK_SIGNING),
)


@dataclass(frozen=True, slots=True)
class RotationResult:
    """How many data keys, stored answers and kept secrets were re-sealed (rows already done
    not counted)."""

    data_keys: int
    answers: int
    secrets: int = 0


def rotate_master_key(
    *, session_factory: sessionmaker[Session], keyring: KeyRing, chunk: int = _CHUNK
) -> RotationResult:
    """Re-wrap everything sealed under another key than `keyring.current`.

    `keyring` must hold the new master key as current and the old one(s) beside it.
    """
    new = keyring.current
    data_keys = answers = 0
    after = 0
    while True:
        with session_factory.begin() as session:
            customers = list(
                session.scalars(
                    select(Customer)
                    .where(Customer.pk > after, Customer.wrapped_data_key.is_not(None))
                    .order_by(Customer.pk)
                    .limit(chunk)
                )
            )
            for customer in customers:
                wrapped = customer.wrapped_data_key
                assert wrapped is not None
                if wrapped_under(wrapped) == new.key_id:
                    continue
                data_key = unwrap_data_key(keyring, customer_id=customer.id, wrapped=wrapped)
                email = None
                if customer.personal is not None:
                    sealed = customer.personal
                    email = open_personal(data_key, customer_id=customer.id, sealed=sealed).email
                session.execute(
                    update(Customer)
                    .where(Customer.pk == customer.pk)
                    .values(
                        wrapped_data_key=wrap_data_key(
                            keyring, customer_id=customer.id, data_key=data_key
                        ),
                        email_index=new.email_index(email) if email is not None else None,
                    )
                )
                data_keys += 1
        if len(customers) < chunk:
            break
        after = customers[-1].pk
    after = 0
    while True:
        with session_factory.begin() as session:
            rows = session.execute(
                select(
                    IdempotencyEntry.pk,
                    IdempotencyEntry.api_key_pk,
                    IdempotencyEntry.key,
                    IdempotencyEntry.response_sealed,
                )
                .where(IdempotencyEntry.pk > after, IdempotencyEntry.response_sealed.is_not(None))
                .order_by(IdempotencyEntry.pk)
                .limit(chunk)
            ).all()
            for row in rows:
                sealed = bytes(row.response_sealed)
                if wrapped_under(sealed) == new.key_id:
                    continue
                # The same scope as `api.idempotency` binds answers to.
                scope = f"{row.api_key_pk}|{row.key}"
                body = open_response(keyring, scope=scope, sealed=sealed)
                session.execute(
                    update(IdempotencyEntry)
                    .where(IdempotencyEntry.pk == row.pk)
                    .values(response_sealed=seal_response(keyring, scope=scope, body=body))
                )
                answers += 1
        if len(rows) < chunk:
            break
        after = rows[-1].pk
    secrets = sum(
        _reseal_secrets(session_factory, keyring, model, column, purpose, chunk)
        for model, column, purpose in SEALED_SECRETS
    )
    return RotationResult(data_keys=data_keys, answers=answers, secrets=secrets)


def _reseal_secrets(
    session_factory: sessionmaker[Session],
    keyring: KeyRing,
    model: _Holder,
    column: str,
    purpose: SecretPurpose,
    chunk: int,
) -> int:
    """Re-seal one column of kept secrets under `keyring.current`, a chunk per transaction."""
    sealed_column = getattr(model, column)
    done = after = 0
    while True:
        with session_factory.begin() as session:
            rows = session.execute(
                select(model.pk, model.id, sealed_column)
                .where(model.pk > after, sealed_column.is_not(None))
                .order_by(model.pk)
                .limit(chunk)
            ).all()
            for pk, bound_to, sealed in rows:
                if wrapped_under(bytes(sealed)) == keyring.current.key_id:
                    continue
                secret = open_secret(keyring, purpose=purpose, bound_to=bound_to, sealed=sealed)
                session.execute(
                    update(model)
                    .where(model.pk == pk)
                    .values(
                        {
                            column: seal_secret(
                                keyring, purpose=purpose, bound_to=bound_to, secret=secret
                            )
                        }
                    )
                )
                done += 1
        if len(rows) < chunk:
            return done
        after = rows[-1].pk
