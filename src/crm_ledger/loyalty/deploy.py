"""The LoyaltyToken deployment: deploy once beside the AuditLedger, record it, check it.

Exports: `ensure_token_deployment`, `TOKEN_CONTRACT`.

Recorded as a `Deployment` row with contract "LoyaltyToken" (epoch 1), with the chain id,
genesis hash and code hash at the time, so a reset chain is noticed (`ChainReset`). The operator
deploys it (becoming its admin) and grants itself ISSUER_ROLE, REDEEMER_ROLE and EXPIRER_ROLE.
Deploying holds the same kind of lock as the AuditLedger's deployment (a PostgreSQL advisory
transaction lock, SQLite's write lock) from the "is there one?" read to the commit.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.chain.deploy import deployment_row, latest_deployment, lock_and_read_latest
from crm_ledger.config import Settings
from crm_ledger.db.models import Deployment
from crm_ledger.errors import ChainReset, ConfigError
from crm_ledger.loyalty.chain import (
    EMPTY_CODE_HASH,
    EXPIRER_ROLE,
    ISSUER_ROLE,
    REDEEMER_ROLE,
    LoyaltyToken,
)

__all__ = ["TOKEN_CONTRACT", "ensure_token_deployment"]

log = logging.getLogger(__name__)

TOKEN_CONTRACT = "LoyaltyToken"
_EPOCH = 1
_ROLES = {"ISSUER_ROLE": ISSUER_ROLE, "REDEEMER_ROLE": REDEEMER_ROLE, "EXPIRER_ROLE": EXPIRER_ROLE}


async def ensure_token_deployment(
    *, session_factory: sessionmaker[Session], token: LoyaltyToken, settings: Settings
) -> Deployment:
    """The recorded LoyaltyToken, checked against the chain; deploys it if none is recorded.

    Raises `ChainReset` when the chain lost it and `ConfigError` when the operator lacks a role
    on it (the operator key changed: grant the roles with the old admin account).
    """
    current = await asyncio.to_thread(latest_deployment, session_factory, TOKEN_CONTRACT)
    if current is None:
        current = await _deploy(session_factory, token, settings)
    await _verify(token, current)
    bound = token.at(current.address)
    for name, role in _ROLES.items():
        if not await bound.has_role(role, token.operator):
            raise ConfigError(
                f"the loyalty operator {token.operator} lacks {name} on the LoyaltyToken at "
                f"{current.address}: grant it with the token's admin account, or configure "
                "that admin as the operator"
            )
    return current


async def _deploy(
    session_factory: sessionmaker[Session], token: LoyaltyToken, settings: Settings
) -> Deployment:
    session = session_factory()
    try:
        recorded = await lock_and_read_latest(session, TOKEN_CONTRACT)
        if recorded is not None:
            await asyncio.to_thread(session.commit)
            return recorded
        deployed = await token.deploy(
            name=settings.loyalty_token_name, symbol=settings.loyalty_token_symbol
        )
        bound = token.at(deployed.address)
        for role in _ROLES.values():
            await bound.wait_mined(await bound.send_grant_role(role, token.operator))
        row = await deployment_row(token, deployed, contract=TOKEN_CONTRACT, epoch=_EPOCH)
        session.add(row)
        await asyncio.to_thread(session.commit)
    finally:
        await asyncio.to_thread(session.close)
    log.info(
        "deployed LoyaltyToken at %s on chain %d (block %d), operator %s",
        row.address,
        row.chain_id,
        row.block_number,
        token.operator,
    )
    return row


async def _verify(token: LoyaltyToken, deployment: Deployment) -> None:
    chain_id = await token.chain_id()
    if chain_id != deployment.chain_id:
        raise ChainReset(
            f"the node at {token.rpc_url} is chain {chain_id}, but the LoyaltyToken was deployed "
            f"at {deployment.address} on chain {deployment.chain_id}; point the service back at "
            f"chain {deployment.chain_id}",
            expected=f"chain id {deployment.chain_id}",
            found=f"chain id {chain_id}",
        )
    code_hash = await token.code_hash(deployment.address)
    genesis = await token.genesis_hash()
    if code_hash != deployment.code_hash or genesis != deployment.genesis_hash:
        found = "no code" if code_hash == EMPTY_CODE_HASH else f"code 0x{code_hash.hex()}"
        raise ChainReset(
            f"chain {chain_id} at {token.rpc_url} no longer holds the LoyaltyToken deployed at "
            f"{deployment.address} in block {deployment.block_number} ({found} there now): "
            "the chain was reset or replaced. Loyalty issuance is stopped; the journal keeps "
            "every lot, redemption and expiration.",
            expected=f"code 0x{deployment.code_hash.hex()}",
            found=found,
        )
