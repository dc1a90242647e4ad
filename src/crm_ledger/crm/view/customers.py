"""The CRM customer list: searched, filtered, sorted, paged by keyset cursor.

Exports: `list_customers`, `SORT_KEYS`, `INDEXED_SORT_KEYS`, `DEFAULT_PAGE_SIZE`,
`MAX_PAGE_SIZE`.

What a page costs. The default order (`-created_at`) and `created_at` read the index
`ix_customers_created` (created_at, pk) in order, and a cursor carries the last row's
(created_at, pk), so the next page starts where the last one stopped: a page reads its own rows
(plus those a filter skips) whatever the size of the list. Filters are checked on each row read:
the balance through the wallet and its indexed balance (key lookups), the newest
interaction by one seek in `ix_records_customer_created`, the tag in the row's JSON, `q` against
the blind email index, the id and the external ref. A filter that matches one customer in k
reads about k rows per row shown, at most the whole list once (about 45 ms of CPU at 100,000
customers on SQLite). `last_interaction_at` and `balance` are computed when read (the newest
interaction record, the chain's balance), so a page sorted by them computes and sorts every
customer that matches: slower on large lists (0.3 to 0.8 s a page at 100,000 customers in the
browser; docs/benchmarks.md).

Personal fields are sealed at rest (`journal.privacy`): the list opens them only when the caller
asks for them (`show_personal`), and searches what can be searched without opening them: `q` is
an exact email (its blind index), part of an external ref, or an id. There is no name search
and no sort by name: both would need every name in the clear.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, and_, func, literal, or_, select, tuple_
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

from crm_ledger.crm.schemas import CustomerSummaries, CustomerSummary
from crm_ledger.crm.view.common import (
    aware,
    bad_parameter,
    current_epochs,
    decode_cursor,
    encode_cursor,
    timestamp_or_none,
)
from crm_ledger.db.models import (
    Customer,
    IndexedBalance,
    LoyaltyWallet,
    Record,
    UTCDateTime,
)
from crm_ledger.journal.customers import personal_fields_of, public_fields
from crm_ledger.journal.privacy import KeyRing, keyring_of
from crm_ledger.journal.schemas import is_public_id
from crm_ledger.ledger.leaf import RecordKind

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "INDEXED_SORT_KEYS",
    "MAX_PAGE_SIZE",
    "SORT_KEYS",
    "list_customers",
]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
#: Sort keys of the list; prefix "-" for descending.
SORT_KEYS = ("created_at", "last_interaction_at", "balance")
#: The sort keys read in index order; the others are computed and sorted for every page.
INDEXED_SORT_KEYS = ("created_at",)
_NEVER = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_FILTER_TEXT = 200


@dataclass(frozen=True, slots=True)
class _Filters:
    q: str | None
    tag: str | None
    balance_min: int | None
    balance_max: int | None
    last_interaction_after: datetime | None
    last_interaction_before: datetime | None

    def digest(self) -> str:
        text = json.dumps(
            [
                self.q,
                self.tag,
                self.balance_min,
                self.balance_max,
                self.last_interaction_after.isoformat() if self.last_interaction_after else None,
                self.last_interaction_before.isoformat() if self.last_interaction_before else None,
            ]
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def bounded(self) -> list[str]:
        """What the filters bound: "balance", "last_interaction" (each at most once)."""
        balance = self.balance_min is not None or self.balance_max is not None
        last = self.last_interaction_after is not None or self.last_interaction_before is not None
        return [name for name, used in (("balance", balance), ("last_interaction", last)) if used]


@dataclass(frozen=True, slots=True)
class _Sort:
    """A checked `sort` parameter: its text, its key and its direction."""

    text: str
    key: str
    descending: bool


def list_customers(
    *,
    session: Session,
    limit: int = DEFAULT_PAGE_SIZE,
    cursor: str | None = None,
    sort: str = "-created_at",
    q: str | None = None,
    tag: str | None = None,
    balance_min: int | None = None,
    balance_max: int | None = None,
    last_interaction_after: datetime | None = None,
    last_interaction_before: datetime | None = None,
    show_personal: bool = True,
) -> CustomerSummaries:
    """A page of customers, searched, filtered and sorted; raises `Unprocessable` for bad input.

    `q` matches an exact email (any case, by its blind index), a substring of the external ref
    (any case), or the exact id; `show_personal=False` leaves name, email and phone null and
    does not match emails;
    `tag` one of the customer's tags; balances are the chain's (no address counts as 0);
    `last_interaction_*` bound the newest interaction (customers without one never match).
    """
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise bad_parameter("limit", f"must be from 1 to {MAX_PAGE_SIZE}")
    order = _check_sort(sort)
    filters = _check_filters(
        q, tag, balance_min, balance_max, last_interaction_after, last_interaction_before
    )
    keyring = keyring_of(session)
    columns = _Columns.of(current_epochs(session).token)
    # A role that does not see emails must not use the index as an oracle either.
    by_balance = "balance" in (order.key, *filters.bounded())
    keys = _apply_filters(
        session,
        keyring if show_personal else None,
        columns.page_keys(order, with_balance=by_balance),
        filters,
        columns,
    )
    if cursor is not None:
        value, pk = _decode_list_cursor(cursor, order, filters)
        bound = literal(value, UTCDateTime()) if isinstance(value, datetime) else literal(value)
        # A row value: both databases read it as a range of the (created_at, pk) index.
        seek = tuple_(columns.sort_key(order.key), Customer.pk)
        after = tuple_(bound, literal(pk))
        keys = keys.where(seek < after if order.descending else seek > after)
    rows = session.execute(columns.page_rows(keys.limit(limit + 1), order)).all()
    items = [_summary(row, keyring if show_personal else None) for row in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        next_cursor = _list_cursor(rows[limit - 1], order, filters)
    return CustomerSummaries(items=items, next_cursor=next_cursor)


def _ordered(query: Select[Any], order: _Sort, *by: Any) -> Select[Any]:
    return query.order_by(*(c.desc() if order.descending else c.asc() for c in by))


@dataclass(frozen=True, slots=True)
class _Columns:
    """The list's computed columns, and its two queries.

    A page is read in two steps: first the keys of its rows (pk and sort value, filtered, in
    order, limited), then those rows in full. The first step carries two narrow columns through
    a sort, not every customer's sealed fields: the computed sorts, which sort every matching
    customer, cost a third of what they did; an indexed sort reads its rows in index order.
    """

    token_epoch: int
    last_interaction: Any

    @classmethod
    def of(cls, token_epoch: int | None) -> _Columns:
        last_interaction = (
            select(func.max(Record.created_at))
            .where(
                Record.customer_pk == Customer.pk,
                Record.kind == int(RecordKind.INTERACTION),
            )
            .correlate(Customer)
            .scalar_subquery()
        )
        return cls(token_epoch if token_epoch is not None else -1, last_interaction)

    @property
    def balance(self) -> Any:
        """The chain's balance; a customer without an address counts as 0."""
        return func.coalesce(IndexedBalance.balance, 0)

    def sort_key(self, key: str) -> Any:
        """The expression a sort key orders by (a customer who never interacted: 1970)."""
        if key == "last_interaction_at":
            return func.coalesce(self.last_interaction, literal(_NEVER, UTCDateTime()))
        return self.balance if key == "balance" else Customer.created_at

    def _with_balance(self, query: Select[Any]) -> Select[Any]:
        return query.outerjoin(LoyaltyWallet, LoyaltyWallet.customer_pk == Customer.pk).outerjoin(
            IndexedBalance,
            and_(
                IndexedBalance.epoch == self.token_epoch,
                IndexedBalance.address == func.lower(LoyaltyWallet.address),
            ),
        )

    def page_keys(self, order: _Sort, *, with_balance: bool) -> Select[Any]:
        """Step one, to filter and limit: each row's pk and sort value, in order (joined to the
        balance only when the sort or a filter needs it)."""
        sort_value = self.sort_key(order.key).label("sort_value")
        query = select(Customer.pk, sort_value)
        if with_balance:
            query = self._with_balance(query)
        return _ordered(query, order, sort_value, Customer.pk)

    def page_rows(self, keys: Select[Any], order: _Sort) -> Select[Any]:
        """Step two: the rows `keys` found, in full (customer, last interaction, balance)."""
        page = keys.subquery("page")
        query = self._with_balance(
            select(
                Customer,
                self.last_interaction.label("last_interaction_at"),
                LoyaltyWallet.address,
                IndexedBalance.balance.label("balance"),
                page.c.sort_value,
            ).join(page, page.c.pk == Customer.pk)
        )
        return _ordered(query, order, page.c.sort_value, Customer.pk)


def _summary(row: Row[Any], keyring: KeyRing | None) -> CustomerSummary:
    customer: Customer = row[0]
    shown = personal_fields_of(keyring, customer) if keyring is not None else None
    return CustomerSummary(
        **public_fields(customer, shown),
        last_interaction_at=timestamp_or_none(aware(row.last_interaction_at)),
        loyalty_balance=int(row.balance or 0) if row.address is not None else None,
    )


def _list_cursor(last: Row[Any], order: _Sort, filters: _Filters) -> str:
    customer: Customer = last[0]
    value: Any = last.sort_value
    if order.key == "balance":
        value = int(value)
    else:
        moment = aware(value)
        assert moment is not None
        value = moment.isoformat()
    return encode_cursor({"s": order.text, "f": filters.digest(), "v": value, "k": customer.pk})


def _check_sort(sort: str) -> _Sort:
    key = sort.removeprefix("-")
    if key not in SORT_KEYS:
        keys = ", ".join(SORT_KEYS)
        raise bad_parameter(
            "sort", f"must be one of {keys}, optionally prefixed with '-' for descending"
        )
    return _Sort(text=sort, key=key, descending=sort.startswith("-"))


def _check_filters(
    q: str | None,
    tag: str | None,
    balance_min: int | None,
    balance_max: int | None,
    after: datetime | None,
    before: datetime | None,
) -> _Filters:
    for name, text in (("q", q), ("tag", tag)):
        if text is not None and not 1 <= len(text) <= _MAX_FILTER_TEXT:
            raise bad_parameter(name, f"must be 1 to {_MAX_FILTER_TEXT} characters")
        # No stored value holds one, and SQLite ends a pattern at a NUL: "\0..." matched all.
        if text is not None and any(unicodedata.category(char) == "Cc" for char in text):
            raise bad_parameter(
                name, "must not contain control characters (NUL, tab, newline, ...)"
            )
    for name, number in (("balance_min", balance_min), ("balance_max", balance_max)):
        if number is not None and not 0 <= number <= 2**63 - 1:
            raise bad_parameter(name, "must be a whole number of points from 0 to 2**63 - 1")
    if balance_min is not None and balance_max is not None and balance_min > balance_max:
        raise bad_parameter("balance_min", "must not be above balance_max")
    for name, moment in (("last_interaction_after", after), ("last_interaction_before", before)):
        if moment is not None and moment.tzinfo is None:
            raise bad_parameter(name, "must be an RFC 3339 timestamp with a time zone, e.g. ...Z")
    if after is not None and before is not None and after >= before:
        raise bad_parameter("last_interaction_after", "must be before last_interaction_before")
    return _Filters(
        q=q,
        tag=tag,
        balance_min=balance_min,
        balance_max=balance_max,
        last_interaction_after=after.astimezone(UTC) if after else None,
        last_interaction_before=before.astimezone(UTC) if before else None,
    )


def _apply_filters(
    session: Session,
    keyring: KeyRing | None,
    query: Select[Any],
    filters: _Filters,
    columns: _Columns,
) -> Select[Any]:
    if filters.q is not None:
        needle = filters.q.lower()
        matches = [func.lower(Customer.external_ref).contains(needle, autoescape=True)]
        if keyring is not None:
            matches.append(Customer.email_index.in_(keyring.email_indexes(filters.q)))
        if is_public_id(filters.q):
            matches.append(Customer.id == needle)
        query = query.where(or_(*matches))
    if filters.tag is not None:
        if session.get_bind().dialect.name == "postgresql":
            query = query.where(Customer.tags.cast(JSONB).contains([filters.tag]))
        else:
            each = func.json_each(Customer.tags).table_valued("value")
            query = query.where(
                select(1).select_from(each).where(each.c.value == filters.tag).exists()
            )
    balance, last_interaction = columns.balance, columns.last_interaction
    if filters.balance_min is not None:
        query = query.where(balance >= filters.balance_min)
    if filters.balance_max is not None:
        query = query.where(balance <= filters.balance_max)
    if filters.last_interaction_after is not None:
        query = query.where(
            last_interaction > literal(filters.last_interaction_after, UTCDateTime())
        )
    if filters.last_interaction_before is not None:
        query = query.where(
            last_interaction < literal(filters.last_interaction_before, UTCDateTime())
        )
    return query


def _decode_list_cursor(cursor: str, order: _Sort, filters: _Filters) -> tuple[Any, int]:
    document = decode_cursor(cursor, "cursor")
    if set(document) != {"s", "f", "v", "k"} or not isinstance(document["k"], int):
        raise bad_parameter("cursor", "is not a customer-list cursor this API issued")
    if document["s"] != order.text or document["f"] != filters.digest():
        raise bad_parameter(
            "cursor",
            "was issued for another sort or other filters: pass the same sort and filters as "
            "the request that returned it, or leave the cursor out to start again",
        )
    value = document["v"]
    try:
        if order.key in ("created_at", "last_interaction_at"):
            value = datetime.fromisoformat(value)
            if value.tzinfo is None:
                raise ValueError
        elif not isinstance(value, int) or isinstance(value, bool):
            raise ValueError
    except (TypeError, ValueError):
        raise bad_parameter("cursor", "is not a customer-list cursor this API issued") from None
    return value, int(document["k"])
