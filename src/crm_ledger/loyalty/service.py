"""Loyalty in the running service: the supervised issuance worker, and what handlers read.

Exports: `LoyaltyRuntime`, `TokenReader`, `LOYALTY`.

`Runtime` owns one `LoyaltyRuntime`, a worker (`workers.Worker`) its supervisor runs as a peer
of the anchorer and the indexer (a singleton per journal, like them). `prepare()` opens the
process's chain connection, loads the wallet seed and the operator key (never the anchorer's
account: the two would race for nonces), deploys or checks the LoyaltyToken and builds the
issuance worker; `step()` is its round. An unreachable chain is backed off and a reset chain or
unusable settings halt loyalty, by the supervisor, with the message in `/readyz`. Handlers read
the chain through `token_reader()` (None while not connected) and wake the worker with `nudge()`;
in a process that does not run the worker (`serve`'s API processes: the chain process runs it)
`connect_for_reading()` finds the keyring and the deployed token for them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from eth_account.signers.local import LocalAccount
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.chain.connection import ChainConnection
from crm_ledger.chain.deploy import latest_deployment
from crm_ledger.chain.signer import load_signer
from crm_ledger.config import Settings
from crm_ledger.errors import LedgerError
from crm_ledger.loyalty.chain import LoyaltyToken
from crm_ledger.loyalty.deploy import TOKEN_CONTRACT, ensure_token_deployment
from crm_ledger.loyalty.wallets import WalletKeyring, load_operator, load_wallet_keyring
from crm_ledger.loyalty.worker import IssuanceWorker, TokenDeploymentRef

log = logging.getLogger(__name__)

LOYALTY = "loyalty"
#: How long a process that does not run the worker keeps what `connect_for_reading` found.
READER_REFRESH_SECONDS = 10.0


class TokenReader(Protocol):
    """The chain reads handlers make; `LoyaltyToken` is the real one."""

    address: Any

    async def balance_of(self, holder: str) -> int: ...
    async def campaign_remaining(self, campaign: bytes) -> int: ...


@dataclass
class LoyaltyRuntime:
    """The issuance worker and what the API handlers read of it; see the module docstring."""

    settings: Settings
    session_factory: sessionmaker[Session]
    connection: ChainConnection | None = None
    #: Wakes the worker when it idles (the runtime points it at its supervisor).
    wake: Callable[[], None] = lambda: None
    name: str = LOYALTY
    token: LoyaltyToken | None = None
    chain_id: int | None = None
    keyring: WalletKeyring | None = None
    worker: IssuanceWorker | None = None
    _location: dict[str, Any] = field(default_factory=dict)
    _read_token: LoyaltyToken | None = None
    _read_operator: LocalAccount | None = None
    _read_checked_at: float | None = None

    def token_reader(self) -> TokenReader | None:
        """The connected token (the worker's, or one `connect_for_reading` found), or None."""
        return self.token if self.token is not None else self._read_token

    async def connect_for_reading(self) -> None:
        """Handlers' view of the chain in a process that does not run the issuance worker
        (`serve`'s API processes, whose chain process runs it; a copy standing by): the wallet
        keyring and the token the worker deployed, read-only. The keys are loaded once (off the
        event loop: a keystore takes a while to open); the deployment is looked up on first use
        and again at most every `READER_REFRESH_SECONDS` (a new epoch's token, a chain back up).
        Nothing while the chain cannot be reached or no token is deployed yet; a no-op where
        the worker is connected."""
        if self.token is not None or self.connection is None:
            return
        now = time.monotonic()
        if self._read_checked_at is not None and now - self._read_checked_at < (
            READER_REFRESH_SECONDS
        ):
            return
        self._read_checked_at = now
        try:
            link = await self.connection.open()
            if self._read_operator is None or self.chain_id != link.chain_id:
                keyring, operator = await asyncio.to_thread(self._reading_keys, link.chain_id)
                self.keyring, self._read_operator, self.chain_id = keyring, operator, link.chain_id
            else:
                operator = self._read_operator
            deployment = await asyncio.to_thread(
                latest_deployment, self.session_factory, TOKEN_CONTRACT
            )
        except (LedgerError, SQLAlchemyError) as exc:
            log.debug("loyalty: cannot read the chain for the API yet: %s", exc)
            return
        if deployment is not None and (
            self._read_token is None or self._read_token.address != deployment.address
        ):
            self._read_token = LoyaltyToken(link.w3, operator, deployment.address)

    def _reading_keys(self, chain_id: int) -> tuple[WalletKeyring, LocalAccount]:
        """The wallet keyring, and the operator's account the token client is built with
        (nothing is signed with it here)."""
        keyring = load_wallet_keyring(self.settings, chain_id=chain_id)
        anchorer = load_signer(self.settings, chain_id=chain_id).address
        return keyring, load_operator(self.settings, chain_id=chain_id, anchorer=anchorer)

    def nudge(self) -> None:
        """Wake the worker now (from any thread): something new is planned."""
        self.wake()

    async def prepare(self) -> None:
        """Connect, load the keys, and check (or deploy) the LoyaltyToken."""
        assert self.connection is not None, "loyalty needs the process's chain connection"
        link = await self.connection.open()
        anchorer = load_signer(self.settings, chain_id=link.chain_id).address
        keyring = load_wallet_keyring(self.settings, chain_id=link.chain_id)
        operator = load_operator(self.settings, chain_id=link.chain_id, anchorer=anchorer)
        unbound = LoyaltyToken(link.w3, operator, None)
        deployment = await ensure_token_deployment(
            session_factory=self.session_factory, token=unbound, settings=self.settings
        )
        self.keyring, self.chain_id = keyring, link.chain_id
        self.token = unbound.at(deployment.address)
        self.worker = IssuanceWorker(
            session_factory=self.session_factory,
            token=self.token,
            deployment=TokenDeploymentRef(
                address=deployment.address,
                code_hash=deployment.code_hash,
                block_number=deployment.block_number,
            ),
            keyring=keyring,
            settings=self.settings,
        )
        self._location = {"token": deployment.address, "operator": operator.address}

    async def step(self) -> int:
        """One issuance round: 1 when it did something, else 0."""
        assert self.worker is not None, "prepare() first"
        return int(await self.worker.step())

    async def close(self) -> None:
        """Handlers stop reading the token (the chain connection is the process's)."""
        self.token = None

    def report(self) -> dict[str, Any]:
        """Token, operator, ops confirmed, rollbacks seen, what waits."""
        if self.worker is None:
            return {}
        stats = self.worker.stats
        return {
            **self._location,
            "ops_confirmed": stats.ops_confirmed,
            "rollbacks_detected": stats.rollbacks_detected,
            "waiting_for": stats.waiting_for,
        }
