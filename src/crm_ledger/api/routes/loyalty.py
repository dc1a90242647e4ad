"""/v1/campaigns, /v1/redemptions, /v1/customers/{id}/loyalty: tokenised rewards.

Campaigns and awards need a `marketing` or `admin` key; redemptions and linking a wallet
`recorder`, `marketing` or `admin`; reading a customer's loyalty account or a redemption, any
key. Every POST takes an `Idempotency-Key`. Writes commit to the journal and return; the
loyalty worker puts them on chain (awards answer 202 with a job to follow). Handlers read the
chain through `TokenReaderDep` (tests override `get_token_reader`); when it cannot be reached,
chain figures are null and the journal's checks still hold.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from crm_ledger.api.deps import (
    AnyKey,
    MarketingKey,
    RuntimeDep,
    SessionDep,
    SettingsDep,
    problem_responses,
)
from crm_ledger.api.idempotency import NoBody, Written, json_response
from crm_ledger.api.privacy import ERASED_REPLAY
from crm_ledger.api.routes import add_actions
from crm_ledger.api.transaction import read_only
from crm_ledger.api.writes import MarketingWrites, RedeemerWrites
from crm_ledger.db.models import utcnow
from crm_ledger.errors import ChainError
from crm_ledger.journal.customers import get_customer
from crm_ledger.loyalty import awards, campaigns, redemptions
from crm_ledger.loyalty.balances import live_points, loyalty_account
from crm_ledger.loyalty.campaigns import CampaignStatus
from crm_ledger.loyalty.schemas import (
    AwardCreate,
    AwardJobPublic,
    CampaignCreate,
    CampaignPublic,
    CampaignsPublic,
    LoyaltyAccountPublic,
    RedemptionCreate,
    RedemptionPublic,
    WalletLink,
)
from crm_ledger.loyalty.service import TokenReader
from crm_ledger.loyalty.wallets import link_wallet

router = APIRouter(tags=["loyalty"])


_ERRORS = problem_responses(401, 403, 404, 409, 413, 422, 429)


async def get_token_reader(runtime: RuntimeDep) -> TokenReader | None:
    """The LoyaltyToken as the running worker sees it (or, where the worker runs in another
    process, as it deployed it); None while it is not connected."""
    await runtime.loyalty.connect_for_reading()
    return runtime.loyalty.token_reader()


TokenReaderDep = Annotated[TokenReader | None, Depends(get_token_reader)]


# Campaigns -------------------------------------------------------------------------------


@router.post(
    "/v1/campaigns",
    status_code=201,
    response_model=CampaignPublic,
    responses=_ERRORS,
    summary="Create a campaign (marketing, admin)",
)
def create_campaign(
    payload: CampaignCreate, runtime: RuntimeDep, writes: MarketingWrites
) -> Response:
    """An active campaign; its budget is set on chain before it issues anything."""

    def write(session: Session) -> str:
        campaign = campaigns.create_campaign(session=session, payload=payload)
        return campaigns.campaign_public(campaign).model_dump_json()

    return writes.run_sync(payload, write, status_code=201, on_commit=runtime.loyalty.nudge)


@router.get(
    "/v1/campaigns",
    response_model=CampaignsPublic,
    responses=_ERRORS,
    summary="List campaigns, newest first (marketing, admin)",
)
def list_campaigns(session: SessionDep, key: MarketingKey) -> Response:
    """The newest 200 campaigns."""
    with read_only(session):
        found = campaigns.list_campaigns(session=session)
        now = utcnow()
        return json_response(
            CampaignsPublic(items=[campaigns.campaign_public(c, now) for c in found])
        )


@router.get(
    "/v1/campaigns/{campaign_id}",
    response_model=CampaignPublic,
    responses=_ERRORS,
    summary="Fetch a campaign (marketing, admin)",
)
def get_campaign(campaign_id: str, session: SessionDep, key: MarketingKey) -> Response:
    """One campaign and where its budget stands."""
    with read_only(session):
        campaign = campaigns.get_campaign(session=session, campaign_id=campaign_id)
        return json_response(campaigns.campaign_public(campaign))


def _status_change(status: CampaignStatus, summary: str) -> Any:
    def change(campaign_id: str, runtime: RuntimeDep, writes: MarketingWrites) -> Response:
        def write(session: Session) -> str:
            campaign = campaigns.set_status(session=session, campaign_id=campaign_id, status=status)
            return campaigns.campaign_public(campaign).model_dump_json()

        return writes.run_sync(NoBody(), write, on_commit=runtime.loyalty.nudge)

    change.__doc__ = summary
    return change


add_actions(
    router,
    "/v1/campaigns/{campaign_id}",
    {
        "pause": _status_change(CampaignStatus.PAUSED, "Stop earning and awards until resumed."),
        "resume": _status_change(CampaignStatus.ACTIVE, "Earn and award again."),
        "close": _status_change(
            CampaignStatus.CLOSED,
            "Close for good; the budget on chain drops to what the campaign planned.",
        ),
    },
    noun="campaign",
    roles="marketing, admin",
    response_model=CampaignPublic,
    responses=_ERRORS,
)


# Awards ----------------------------------------------------------------------------------


@router.post(
    "/v1/campaigns/{campaign_id}/awards",
    status_code=202,
    response_model=AwardJobPublic,
    responses=_ERRORS,
    summary="Award points to many customers (marketing, admin)",
)
async def create_award(
    campaign_id: str,
    payload: AwardCreate,
    settings: SettingsDep,
    runtime: RuntimeDep,
    reader: TokenReaderDep,
    writes: MarketingWrites,
) -> Response:
    """Validate the whole award, plan one lot per recipient, answer 202 with the job.

    Rejected whole, before anything is planned or sent, when a customer is unknown or erased,
    a recipient would pass the per-customer cap, or the total is over what the campaign has
    left (in the journal, and on chain once the lots already queued are issued).
    """
    chain_remaining = await _chain_remaining(runtime, reader, campaign_id)

    def write(session: Session) -> str:
        job = awards.plan_award(
            session=session,
            campaign_id=campaign_id,
            payload=payload,
            max_recipients=settings.loyalty_max_award_recipients,
            chain_remaining=chain_remaining,
        )
        campaign = campaigns.get_campaign(session=session, campaign_id=campaign_id)
        return awards.job_progress(session, campaign, job).model_dump_json()

    return await writes.run(payload, write, status_code=202, on_commit=runtime.loyalty.nudge)


async def _chain_remaining(
    runtime: Any, reader: TokenReader | None, campaign_id: str
) -> int | None:
    """campaignRemaining on chain, when the chain holds the campaign's budget and answers."""
    if reader is None:
        return None

    def synced_onchain_id() -> bytes | None:
        with runtime.session_factory() as session, read_only(session):
            campaign = campaigns.get_campaign(session=session, campaign_id=campaign_id)
            return campaign.onchain_id if campaign.chain_budget == campaign.budget else None

    onchain_id = await run_in_threadpool(synced_onchain_id)
    if onchain_id is None:
        return None
    try:
        return await reader.campaign_remaining(onchain_id)
    except ChainError:
        return None


@router.get(
    "/v1/campaigns/{campaign_id}/awards/{job_id}",
    response_model=AwardJobPublic,
    responses=_ERRORS,
    summary="Follow an award job (marketing, admin)",
)
def get_award(campaign_id: str, job_id: str, session: SessionDep, key: MarketingKey) -> Response:
    """How many of the job's lots are issued, pending or failed, and in which transactions."""
    with read_only(session):
        campaign = campaigns.get_campaign(session=session, campaign_id=campaign_id)
        job = awards.get_job(session=session, campaign=campaign, job_id=job_id)
        return json_response(awards.job_progress(session, campaign, job))


# Redemptions -----------------------------------------------------------------------------


@router.post(
    "/v1/redemptions",
    status_code=201,
    response_model=RedemptionPublic,
    responses={**_ERRORS, **ERASED_REPLAY},
    summary="Redeem points (recorder, marketing, admin)",
)
def create_redemption(
    payload: RedemptionCreate, runtime: RuntimeDep, writes: RedeemerWrites
) -> Response:
    """Take the points from the customer's oldest lots now; the burn follows on chain.

    409 with `balance` when the customer has fewer spendable points than asked.
    """

    def write(session: Session) -> Written:
        redemption = redemptions.create_redemption(session=session, payload=payload)
        body = redemptions.redemption_public(session, redemption).model_dump_json()
        return Written(body, [payload.customer_id])

    return writes.run_sync(payload, write, status_code=201, on_commit=runtime.loyalty.nudge)


@router.get(
    "/v1/redemptions/{redemption_id}",
    response_model=RedemptionPublic,
    responses=_ERRORS,
    summary="Fetch a redemption (any role)",
)
def get_redemption(redemption_id: str, session: SessionDep, key: AnyKey) -> Response:
    """A redemption and whether its burn is on chain."""
    with read_only(session):
        found = redemptions.get_redemption(session=session, redemption_id=redemption_id)
        return json_response(redemptions.redemption_public(session, found))


# Accounts --------------------------------------------------------------------------------


@router.get(
    "/v1/customers/{customer_id}/loyalty",
    response_model=LoyaltyAccountPublic,
    responses=_ERRORS,
    summary="A customer's loyalty account (any role)",
)
async def get_loyalty_account(
    customer_id: str,
    session: SessionDep,
    runtime: RuntimeDep,
    reader: TokenReaderDep,
    key: AnyKey,
) -> Response:
    """Address, the balance the chain reports, lots with expiry, and history with tx hashes."""

    def read() -> LoyaltyAccountPublic:
        with read_only(session):
            return loyalty_account(
                session=session,
                customer_id=customer_id,
                keyring=runtime.loyalty.keyring,
                now=utcnow(),
            )

    account = await run_in_threadpool(read)
    if reader is not None:
        account.token = {"address": reader.address, "chain_id": runtime.loyalty.chain_id}
        if account.address is not None:
            try:
                account.chain_balance = await reader.balance_of(account.address)
            except ChainError as exc:
                account.chain_error = str(exc)
    else:
        account.chain_error = "the loyalty worker is not connected to the chain"
    return json_response(account)


@router.post(
    "/v1/customers/{customer_id}/loyalty/wallet",
    response_model=LoyaltyAccountPublic,
    responses={**_ERRORS, **ERASED_REPLAY},
    summary="Link an address the customer owns (recorder, marketing, admin)",
)
def link_customer_wallet(
    customer_id: str,
    payload: WalletLink,
    runtime: RuntimeDep,
    writes: RedeemerWrites,
    _reader: TokenReaderDep,  # loads the wallet keyring where the worker runs elsewhere
) -> Response:
    """Points issued from now on go to `address`; needs its owner's EIP-191 signature.

    Refused (409) while the current address holds or is owed points.
    """

    def write(session: Session) -> Written:
        customer = get_customer(session=session, customer_id=customer_id)
        link_wallet(
            session=session,
            keyring=runtime.loyalty.keyring,
            customer_pk=customer.pk,
            customer_id=customer.id,
            address=payload.address,
            signature=payload.signature,
            live_points=live_points(session, customer.pk),
        )
        account = loyalty_account(
            session=session, customer_id=customer.id, keyring=None, now=utcnow()
        )
        return Written(account.model_dump_json(), [customer.id])

    return writes.run_sync(payload, write)
