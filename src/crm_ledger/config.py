"""Settings: the only place that reads the environment.

Every setting is `CRM_LEDGER_<NAME>` in the environment (or a `.env` file). Handlers receive
them through `get_settings()`, which tests override.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_CHAIN_ID = 31337
#: The well-known Anvil/Hardhat test mnemonic. Its keys are public: chain id 31337 only.
DEV_MNEMONIC = "test test test test test test test test test test test junk"


class Settings(BaseSettings):
    """crm-ledger configuration; defaults run everything embedded (SQLite + a local Anvil)."""

    model_config = SettingsConfigDict(env_prefix="CRM_LEDGER_", env_file=".env", extra="ignore")

    data_dir: Path = Field(default=Path("data"), description="SQLite file, Anvil state, reports")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default sqlite:///<data_dir>/ledger.sqlite"
    )
    sqlite_synchronous: str = Field(
        default="FULL", pattern="^(FULL|NORMAL)$", description="FULL survives power loss too"
    )

    host: str = "127.0.0.1"
    port: int = 8000

    rpc_url: str | None = Field(
        default=None, description="EVM JSON-RPC URL; unset means start Anvil on 127.0.0.1"
    )
    anvil_port: int = 8545
    anvil_bin: Path | None = Field(default=None, description="Anvil binary; default: npm's")
    rpc_timeout_seconds: float = 10.0

    private_key: SecretStr | None = Field(default=None, description="anchorer key, 0x-hex")
    keystore_path: Path | None = Field(default=None, description="encrypted JSON keystore")
    keystore_password: SecretStr | None = None
    mnemonic: SecretStr | None = Field(
        default=None, description="BIP-39 mnemonic; unset on chain 31337 means the dev mnemonic"
    )

    batch_max_records: int = Field(default=2000, ge=1, le=100_000)
    batch_max_age_seconds: float = Field(default=0.25, gt=0)
    anchor_poll_seconds: float = Field(default=0.05, gt=0)
    anchor_idle_check_seconds: float = Field(
        default=1.0,
        ge=0,
        description="how often an idle anchorer checks the chain for a reset, rollback or "
        "reorg (one with a batch to anchor checks before every step)",
    )
    anchor_retry_max_seconds: float = Field(default=5.0, gt=0)
    confirmations: int = Field(
        default=0,
        ge=0,
        le=10_000,
        description="blocks on top of an event's block before the indexer reads it (confirmed)",
    )
    run_anchorer: bool = True
    # Stuck anchor transactions: replaced under the same nonce with higher EIP-1559 fees.
    anchor_replace_after_seconds: float = Field(
        default=30.0,
        gt=0,
        description="an anchor transaction not mined after this long is replaced (same nonce)",
    )
    anchor_fee_bump_percent: float = Field(
        default=12.5,
        ge=12.5,
        le=1000,
        description="each replacement raises both fee caps by this much (geth needs 10 %)",
    )
    anchor_max_fee_per_gas_gwei: float = Field(
        default=500.0,
        gt=0,
        description="no anchor transaction offers more; at the cap the anchorer waits, saying so",
    )

    indexer_poll_seconds: float = Field(default=0.1, gt=0)
    indexer_retry_max_seconds: float = Field(default=5.0, gt=0)
    indexer_chunk_blocks: int = Field(
        default=2000, ge=1, le=100_000, description="blocks per eth_getLogs request"
    )
    reconcile_interval_seconds: float = Field(default=60.0, gt=0)
    feed_retention_days: float = Field(
        default=30.0, gt=0, description="change-feed events older than this are pruned"
    )
    run_indexer: bool = True

    wallet_mnemonic: SecretStr | None = Field(
        default=None,
        description="BIP-39 seed of the customers' custodial loyalty addresses and of the loyalty "
        "operator (m/44'/60'/0'/0/1); unset on chain 31337 means the dev mnemonic",
    )
    loyalty_private_key: SecretStr | None = Field(
        default=None, description="loyalty operator key (token admin, issuer, burner), 0x-hex"
    )
    loyalty_token_name: str = "crm-ledger points"
    loyalty_token_symbol: str = "PTS"
    loyalty_batch_max_entries: int = Field(
        default=550, ge=1, le=580, description="issuances per issueBatch (16,777,216 gas cap)"
    )
    loyalty_expire_batch_max_entries: int = Field(default=400, ge=1, le=1000)
    loyalty_poll_seconds: float = Field(default=0.05, gt=0)
    loyalty_expiry_interval_seconds: float = Field(default=60.0, gt=0)
    loyalty_max_award_recipients: int = Field(default=10_000, ge=1, le=100_000)
    run_loyalty: bool = True
    chain_process: bool = Field(
        default=True,
        description="`serve` runs the anchorer, the indexer and loyalty issuance in a child "
        "process of their own (with the embedded Anvil started by `serve` itself), not inline",
    )

    max_body_bytes: int = 64 * 1024
    max_batch_items: int = 1000

    auto_migrate: bool = True

    # Web console (issue 13) ------------------------------------------------------------------
    console_rpc_url: str | None = Field(
        default=None,
        description="the JSON-RPC URL the console's in-browser verifier reads the chain from; "
        "unset: the service's own RPC URL when it carries no credentials",
    )

    # Hardening (issue 10): TLS and per-key rate limits (docs/security.md) ---------------------
    tls_certfile: Path | None = Field(default=None, description="PEM certificate: serve HTTPS")
    tls_keyfile: Path | None = Field(default=None, description="PEM private key of tls_certfile")
    rate_limit_recorder: float = Field(
        default=5000, ge=0, description="requests per second per recorder key; 0: unlimited"
    )
    rate_limit_auditor: float = Field(default=5000, ge=0, description="per auditor key")
    rate_limit_marketing: float = Field(default=5000, ge=0, description="per marketing key")
    rate_limit_admin: float = Field(default=5000, ge=0, description="per admin key")
    rate_limit_burst_seconds: float = Field(
        default=2.0, gt=0, le=3600, description="a key may burst this many seconds of its rate"
    )

    # Commerce ingest (issue 11) ------------------------------------------------------------
    ingest_rotation_grace_seconds: float = Field(
        default=86_400.0, ge=0, description="how long a rotated-out source secret still verifies"
    )
    ingest_failed_retention_days: float = Field(
        default=30.0, gt=0, description="raw bodies of failed deliveries are deleted after this"
    )
    ingest_batch_size: int = Field(
        default=50, ge=1, le=5000, description="deliveries per step (per write transaction)"
    )
    max_webhook_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    run_ingest: bool = True
    ingest_process: bool = Field(
        default=True,
        description="`serve` runs the ingest mapper in a child process of its own, not inline",
    )

    # Salesforce sync (issue 12; docs/salesforce.md) ----------------------------------------
    salesforce_login_url: str = Field(
        default="https://login.salesforce.com",
        description="OAuth token host and JWT audience (https://test.salesforce.com: sandboxes)",
    )
    salesforce_client_id: str | None = Field(
        default=None, description="the connected app's consumer key (JWT `iss`)"
    )
    salesforce_username: str | None = Field(
        default=None, description="the integration user the JWT bearer flow logs in as (`sub`)"
    )
    salesforce_private_key_path: Path | None = Field(
        default=None, description="PEM RSA key whose certificate the connected app holds"
    )
    salesforce_api_version: str = Field(default="v62.0", pattern=r"^v\d+\.\d$")
    salesforce_object: str = Field(default="Contact", pattern=r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
    salesforce_job_max_bytes: int = Field(
        default=100_000_000,
        ge=1024,
        le=150_000_000,
        description="CSV bytes per Bulk API 2.0 job (the API takes up to 150 MB per upload)",
    )
    salesforce_job_max_records: int = Field(default=10_000, ge=1, le=1_000_000)
    salesforce_poll_seconds: float = Field(default=2.0, gt=0)
    salesforce_timeout_seconds: float = Field(default=30.0, gt=0)
    log_format: Literal["text", "json"] = Field(
        default="text", description="json: one ECS object per line (Splunk, ELK); --log-format"
    )
    run_salesforce_sync: bool = Field(
        default=False, description="keep Contacts current from the change feed (a worker)"
    )

    # Outbound relays (issue 12): NATS JetStream and signed webhooks. -------------------------
    nats_url: str | None = Field(
        default=None, description="NATS server URL, e.g. nats://127.0.0.1:4222; unset: no relay"
    )
    nats_stream: str = Field(
        default="CRM_LEDGER", pattern=r"^[A-Za-z0-9_-]{1,64}$", description="JetStream stream"
    )
    nats_subject_prefix: str = Field(
        default="crm-ledger",
        pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$",
        description="events go to <prefix>.<event type>",
    )
    nats_max_age_days: float = Field(
        default=7.0, gt=0, description="the stream keeps messages this long (created if absent)"
    )
    nats_duplicate_window_seconds: float = Field(
        default=600.0, gt=0, description="JetStream drops a repeated Nats-Msg-Id this long"
    )
    nats_batch_size: int = Field(default=500, ge=1, le=4000, description="events per publish")
    nats_ack_timeout_seconds: float = Field(default=5.0, gt=0)

    run_webhooks: bool = True
    webhook_allow_private_urls: bool = Field(
        default=False,
        description="let subscriptions target loopback, private, link-local and metadata "
        "addresses (tests and closed networks only)",
    )
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    webhook_max_concurrency: int = Field(default=64, ge=1, le=1000)
    webhook_max_per_subscription: int = Field(default=16, ge=1, le=100)
    webhook_retry_schedule_seconds: list[float] = Field(
        default=[5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0],
        min_length=1,
        max_length=30,
        description="waits before each retry (jittered ±20%); default about 27 hours",
    )
    webhook_auto_pause_failures: int = Field(
        default=50, ge=1, description="failed attempts in a row that pause a subscription"
    )

    # Personal data (issue 10): encryption at rest, access log, idempotency retention.
    master_key: SecretStr | None = Field(
        default=None, description="32 random bytes, base64: wraps every customer's data key"
    )
    master_key_file: Path | None = Field(
        default=None,
        description="file holding the master key (base64); default <data_dir>/master.key",
    )
    idempotency_retention_hours: float = Field(
        default=24.0, gt=0, description="stored idempotent answers older than this are pruned"
    )
    idempotency_prune_interval_seconds: float = Field(
        default=300.0, gt=0, description="how often the write path prunes expired answers"
    )
    personal_data_roles: str = Field(
        default="recorder,auditor,admin",
        description="comma-separated roles that see personal fields; others get pseudonymous views",
    )

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to a SQLite file in the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'ledger.sqlite').resolve()}"


@lru_cache
def get_settings() -> Settings:
    """Settings read once from the environment."""
    return Settings()
