"""Loyalty request documents and the shapes the API answers with.

Exports: `CampaignCreate`, `OrderTotalRule`, `InteractionRule`, `TagMultiplierRule`, `Rule`,
`AwardCreate`, `Segment`, `RedemptionCreate`, `WalletLink`, `CampaignPublic`, `CampaignsPublic`,
`AwardJobPublic`, `RedemptionPublic`, `LotPublic`, `HistoryEntry`, `LoyaltyAccountPublic`,
`MAX_POINTS`.

Points are whole numbers, sent as JSON integers: a fraction, a string, a boolean, zero, a
negative number or more than `MAX_POINTS` is refused with a 422 that names the field. Rates and
multipliers are decimal strings ("1.5"), for the same reason orders state money as strings.
"""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from crm_ledger.journal.schemas import EXAMPLE_ID, Currency, Label, Name, PublicId, Timestamp

#: The most points any one amount (budget, award, cap, redemption) may state: far above any real
#: programme, and far below 2**53, so every amount stays exact in JSON.
MAX_POINTS = 10**12
_DECIMAL = re.compile(r"\d{1,9}(\.\d{1,6})?", re.ASCII)
# Anchored: pydantic's `pattern` searches, so an unanchored one accepts junk around a match.
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$", re.ASCII)
_SIGNATURE = re.compile(r"^0x[0-9a-fA-F]{130}$", re.ASCII)
_ISO_DURATION = re.compile(r"P(?!$)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+S)?)?")

Points = Annotated[StrictInt, Field(gt=0, le=MAX_POINTS, description="whole points")]


def _positive_decimal(value: object) -> Decimal:
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise PydanticCustomError(
            "decimal_number", 'write rates as decimal strings such as "1.5", not JSON numbers'
        )
    if not isinstance(value, str) or not _DECIMAL.fullmatch(value) or Decimal(value) == 0:
        raise PydanticCustomError(
            "decimal_format",
            'must be a positive decimal string of up to 9 digits and 6 decimals, such as "1.5"',
        )
    return Decimal(value)


def _duration(value: object) -> object:
    if not isinstance(value, str) or not _ISO_DURATION.fullmatch(value):
        raise PydanticCustomError(
            "iso_duration",
            'must be an ISO 8601 duration in whole units, such as "P90D" or "PT12H"',
        )
    return value


def _whole_seconds(value: timedelta) -> timedelta:
    if value.total_seconds() < 1 or value.microseconds:
        raise PydanticCustomError("duration_range", "must be at least one whole second")
    if value > timedelta(days=36_500):
        raise PydanticCustomError("duration_range", "must be at most 100 years")
    return value


# A string in JSON (numbers are refused), whatever pydantic would say of a Decimal.
PositiveDecimal = Annotated[
    Decimal,
    BeforeValidator(_positive_decimal),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": f"^{_DECIMAL.pattern}$",
            "description": "a positive decimal string, up to 9 digits and 6 decimals",
            "examples": ["1.5"],
        }
    ),
]
Duration = Annotated[timedelta, BeforeValidator(_duration), AfterValidator(_whole_seconds)]
Address = Annotated[
    str, StringConstraints(pattern=_ADDRESS.pattern), Field(examples=["0x" + "ab" * 20])
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OrderTotalRule(_Request):
    """`points_per_unit` points per currency unit of a paid order's total (rounded down)."""

    type: Literal["order_total"]
    points_per_unit: PositiveDecimal
    currency: Currency | None = Field(default=None, description="only orders in this currency")


class InteractionRule(_Request):
    """Fixed `points` for each interaction of type `interaction_type`."""

    type: Literal["interaction"]
    interaction_type: Label
    points: Points


class TagMultiplierRule(_Request):
    """Customers with `tag` earn `multiplier` times (the highest multiplier applies)."""

    type: Literal["tag_multiplier"]
    tag: Label
    multiplier: PositiveDecimal

    @model_validator(mode="after")
    def _at_most_100(self) -> TagMultiplierRule:
        if self.multiplier > 100:
            raise PydanticCustomError("multiplier_range", "multiplier must be at most 100")
        return self


Rule = Annotated[OrderTotalRule | InteractionRule | TagMultiplierRule, Field(discriminator="type")]


class CampaignCreate(_Request):
    """A campaign: its budget (set on chain), window, earning rules, cap and expiry policy."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "Winter rewards",
                    "budget": 100000,
                    "rules": [
                        {"type": "order_total", "points_per_unit": "1.5", "currency": "EUR"},
                        {"type": "tag_multiplier", "tag": "vip", "multiplier": "2"},
                    ],
                    "points_expire_after": "P365D",
                }
            ]
        }
    )

    name: Name
    budget: Points
    starts_at: Timestamp | None = Field(default=None, description="default: now")
    ends_at: Timestamp | None = Field(default=None, description="default: no end")
    rules: Annotated[list[Rule], Field(max_length=50)] = []
    per_customer_cap: Points | None = Field(
        default=None, description="most points one customer may get from the campaign"
    )
    points_expire_after: Duration | None = Field(
        default=None, description='ISO 8601 duration after earning, e.g. "P365D"; null: never'
    )

    @model_validator(mode="after")
    def _window(self) -> CampaignCreate:
        if self.starts_at and self.ends_at and self.ends_at <= self.starts_at:
            raise PydanticCustomError("campaign_window", "ends_at must be after starts_at")
        return self


class Segment(_Request):
    """Customers matching every criterion given (at least one)."""

    tag: Label | None = None
    min_orders: Annotated[StrictInt, Field(ge=1, le=1_000_000)] | None = Field(
        default=None, description="at least this many distinct order numbers"
    )
    last_interaction_after: Timestamp | None = None
    last_interaction_before: Timestamp | None = None

    @model_validator(mode="after")
    def _some_criterion(self) -> Segment:
        if all(value is None for value in self.model_dump().values()):
            raise PydanticCustomError(
                "segment_empty",
                "a segment needs at least one of tag, min_orders, last_interaction_after, "
                "last_interaction_before",
            )
        return self


class AwardCreate(_Request):
    """The same `points` to each of `customer_ids`, or to every customer in `segment`."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"points": 50, "customer_ids": [EXAMPLE_ID]}]}
    )

    points: Points
    customer_ids: Annotated[list[PublicId], Field(min_length=1)] | None = None
    segment: Segment | None = None

    @model_validator(mode="after")
    def _one_selection(self) -> AwardCreate:
        if (self.customer_ids is None) == (self.segment is None):
            raise PydanticCustomError(
                "award_selection", "give exactly one of customer_ids and segment"
            )
        return self


class RedemptionCreate(_Request):
    """Burn `points` of the customer's balance for the reward `reward_ref`."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"customer_id": EXAMPLE_ID, "points": 20, "reward_ref": "free-coffee"}]
        }
    )

    customer_id: PublicId
    points: Points
    reward_ref: Name = Field(description="your reference of the reward; never sent on chain")


class WalletLink(_Request):
    """An address the customer owns and their EIP-191 signature of the link message."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"address": "0x" + "ab" * 20, "signature": "0x" + "cd" * 65}]
        }
    )

    address: Address
    signature: Annotated[str, StringConstraints(pattern=_SIGNATURE.pattern)]


# Answers ---------------------------------------------------------------------------------


class CampaignPublic(BaseModel):
    """A campaign and where its budget stands."""

    id: str
    name: str
    status: str = Field(description="active, paused, closed; ended once ends_at has passed")
    onchain_id: str = Field(description="the opaque bytes32 the token knows the campaign by")
    budget: int
    planned_points: int = Field(description="points of lots planned or issued")
    issued_points: int = Field(description="points confirmed on chain")
    remaining: int = Field(description="budget - planned_points")
    chain_budget: int | None = Field(description="the budget last confirmed on chain")
    starts_at: str
    ends_at: str | None
    rules: list[dict[str, Any]]
    per_customer_cap: int | None
    points_expire_after: str | None
    created_at: str
    closed_at: str | None


class CampaignsPublic(BaseModel):
    """Campaigns, newest first."""

    items: list[CampaignPublic]


class AwardJobPublic(BaseModel):
    """A bulk award and its progress."""

    id: str
    campaign_id: str
    status: str = Field(description="queued, done or failed")
    points: int
    recipients: int
    total_points: int
    issued: int
    pending: int
    failed: int
    transactions: list[str]
    errors: list[str]
    created_at: str
    finished_at: str | None
    progress_url: str


class RedemptionPublic(BaseModel):
    """A redemption and whether its burn is on chain."""

    id: str
    customer_id: str
    points: int
    reward_ref: str = Field(description="empty once the customer's personal data was erased")
    status: str = Field(description="pending, redeemed or failed")
    burn_id: str
    address: str
    tx_hash: str | None
    block_number: int | None
    error: str | None
    created_at: str
    redeemed_at: str | None


class LotPublic(BaseModel):
    """One lot: points issued together, what is left of them, and when they expire."""

    issuance_id: str
    campaign_id: str
    source: str
    points: int
    remaining: int
    status: str
    earned_at: str
    expires_at: str | None
    tx_hash: str | None


class HistoryEntry(BaseModel):
    """One issue, redeem or expire, newest first."""

    type: Literal["issue", "redeem", "expire"]
    points: int
    status: str
    at: str
    tx_hash: str | None
    block_number: int | None
    campaign_id: str | None = None
    redemption_id: str | None = None
    reward_ref: str | None = None
    reason: str | None = None


class LoyaltyAccountPublic(BaseModel):
    """A customer's loyalty account: address, balances, lots and history."""

    customer_id: str
    address: str | None
    address_kind: str | None = Field(description="custodial or linked")
    token: dict[str, Any] | None
    chain_balance: int | None = Field(description="balanceOf(address) as the chain reports it")
    chain_error: str | None
    available: int = Field(description="points on chain, unexpired, not reserved")
    pending: int = Field(description="points planned but not yet on chain")
    reserved: int = Field(description="points of redemptions whose burn is not on chain yet")
    lots: list[LotPublic]
    history: list[HistoryEntry]
