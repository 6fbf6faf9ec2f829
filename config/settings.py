"""Runtime settings: the only reader of the process environment."""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import AnyHttpUrl, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class SendMode(StrEnum):
    """Whether dispatch writes to the outbox file or calls the providers."""

    OUTBOX = "outbox"
    LIVE = "live"


class SourceKind(StrEnum):
    """Where the CRM and billing data comes from."""

    FILES = "files"
    SQL = "sql"


class Settings(BaseSettings):
    """Renewals settings, read from RENEWALS_* environment variables or a .env file."""

    model_config = SettingsConfigDict(
        env_prefix="RENEWALS_",
        env_file=".env",
        env_ignore_empty=True,
        # A shared .env also carries PREFECT_* lines; unknown keys must not fail validation.
        extra="ignore",
    )

    env: str = "dev"
    home: Path = PROJECT_ROOT / "var"
    database_url: str = ""
    config_dir: Path = PROJECT_ROOT / "config"
    templates_dir: Path = PROJECT_ROOT / "templates"

    source_kind: SourceKind = SourceKind.FILES
    source_dir: Path | None = None
    source_url: str = ""
    source_mapping: Path | None = None

    send_mode: SendMode = SendMode.OUTBOX
    outbox_dir: Path | None = None
    company_name: str = "Renewals Demo Bank"
    controller: str = "renewals-demo-bank"
    renew_base_url: AnyHttpUrl = AnyHttpUrl("https://example.invalid/renew")
    unsubscribe_base_url: AnyHttpUrl = AnyHttpUrl("https://example.invalid/unsubscribe")

    # Keyed hash for suppression entries and pseudonymous identifiers; never logged.
    pii_hash_key: SecretStr = SecretStr("dev-only-pii-hash-key")

    batch_size: Annotated[int, Field(gt=0)] = 50_000
    # Rows per chunk of the staged ingest (extract, validate, load): bounds their memory, not their result.
    ingest_chunk_rows: Annotated[int, Field(gt=0)] = 500_000
    dispatch_batch_size: Annotated[int, Field(gt=0)] = 1_000

    # A sharded cycle (`shards` > 1) runs each shard as a flow run of this deployment
    # ("renewal-cycle-shard/<name>"), so workers of its work pool on any machine share the shards; left
    # empty, the shards run one after another in the cycle's own process.
    shard_deployment: str = ""
    # How long a sharded cycle waits for its shard runs before it fails (they keep running).
    shard_timeout_seconds: Annotated[float, Field(gt=0)] = 6 * 3600.0
    # A Dask scheduler (tcp://host:8786): without a shard deployment, a sharded cycle submits its shards as
    # tasks to this cluster through prefect-dask's DaskTaskRunner, so they run side by side on its workers
    # (which need the same code and RENEWALS_* settings).
    dask_address: str = ""

    # A dispatcher's claim on messages it is sending; after this a dead dispatcher's claims are reconciled
    # (on PostgreSQL a live one is detected through its advisory lock, so this only bounds SQLite).
    claim_lease_seconds: Annotated[float, Field(ge=0)] = 600.0
    # How long to wait for provider evidence (a lookup or a webhook event) before an in-doubt message is
    # settled; SendGrid's Event Webhook normally reports a "processed" event within seconds.
    in_doubt_grace_seconds: Annotated[float, Field(ge=0)] = 900.0

    twilio_account_sid: str = ""
    twilio_auth_token: SecretStr = SecretStr("")
    twilio_base_url: str = "https://api.twilio.com"
    twilio_messaging_service_sid: str = ""
    twilio_sms_from: str = ""
    twilio_whatsapp_messaging_service_sid: str = ""
    twilio_timeout_seconds: Annotated[float, Field(gt=0)] = 10.0
    twilio_sms_validity_period: Annotated[int, Field(ge=1, le=36000)] = 36000
    twilio_whatsapp_validity_period: Annotated[int, Field(ge=1, le=36000)] = 14400
    twilio_concurrency: Annotated[int, Field(ge=1)] = 8
    webhook_public_base_url: str = ""

    sms_segment_ceiling: Annotated[int, Field(ge=1)] = 3
    sms_rate_per_second: Annotated[float, Field(gt=0)] = 10.0
    sms_rate_counts_segments: bool = True
    sms_price_per_segment: dict[str, Decimal] = Field(default_factory=dict)
    sms_default_price_per_segment: Decimal = Decimal("0.08")
    whatsapp_rate_per_second: Annotated[float, Field(gt=0)] = 80.0
    whatsapp_default_price: Decimal = Decimal("0.05")
    channel_price_currency: str = "USD"
    # Dispatch processes draining one cycle share each sender's ceiling through a Prefect global
    # concurrency limit with slot decay, named `<prefix>-<channel>-<sender>` (`renewals limits ensure`).
    shared_rate_limits: bool = False
    shared_rate_limit_prefix: str = "renewals-rate"
    # Part of each permit's life kept for the Prefect API round trip that takes it; a slower API wastes
    # permits (and stops dispatch if they always arrive expired), a larger value lowers the throughput.
    shared_rate_limit_api_seconds: Annotated[float, Field(ge=0, le=2)] = 0.1

    retry_max_attempts: Annotated[int, Field(ge=1)] = 4
    retry_base_delay: Annotated[float, Field(ge=0)] = 0.5
    retry_max_delay: Annotated[float, Field(ge=0)] = 30.0

    sendgrid_api_key: SecretStr = SecretStr("")
    sendgrid_host: str = "https://api.sendgrid.com"
    sendgrid_from_email: str = "reminders@example.invalid"
    sendgrid_from_name: str = ""
    sendgrid_timeout_seconds: Annotated[float, Field(gt=0)] = 10.0
    sendgrid_rate_per_second: Annotated[float, Field(gt=0)] = 100.0
    sendgrid_concurrency: Annotated[int, Field(ge=1)] = 8
    sendgrid_asm_group_id: int | None = None
    sendgrid_unsubscribe_mailto: str = ""
    sendgrid_dynamic_templates: dict[str, str] = Field(default_factory=dict)
    sendgrid_webhook_public_key: SecretStr = SecretStr("")
    sendgrid_webhook_max_age_seconds: Annotated[int, Field(ge=1)] = 300

    # The external rewards platform (grant-rewards, fulfilment: webhook). Unset: webhook rewards wait.
    rewards_webhook_url: str = ""
    rewards_webhook_secret: SecretStr = SecretStr("")
    rewards_webhook_timeout_seconds: Annotated[float, Field(gt=0)] = 10.0

    @field_validator("database_url")
    @classmethod
    def _psycopg_driver(cls, value: str) -> str:
        """Use psycopg 3 for PostgreSQL URLs written without a driver."""
        for prefix in ("postgres://", "postgresql://"):
            if value.startswith(prefix):
                return "postgresql+psycopg://" + value[len(prefix) :]
        return value

    @property
    def resolved_database_url(self) -> str:
        """Return the database URL, defaulting to a SQLite file under `home`."""
        return self.database_url or f"sqlite:///{self.home / 'renewals.db'}"

    @property
    def resolved_source_dir(self) -> Path:
        """Return the directory the file connector reads from."""
        return self.source_dir or self.home / "demo-data"

    @property
    def whatsapp_templates_path(self) -> Path:
        """Return the WhatsApp template registry file."""
        return self.config_dir / "whatsapp_templates.yaml"

    @property
    def resolved_outbox_dir(self) -> Path:
        """Return the directory the outbox channel appends to."""
        return self.outbox_dir or self.home / "outbox"

    def check_live_secrets(self) -> None:
        """Refuse live sending with missing or placeholder credentials outside dev."""
        if self.send_mode is not SendMode.LIVE:
            return
        missing = [
            name
            for name, value in (
                ("RENEWALS_TWILIO_ACCOUNT_SID", self.twilio_account_sid),
                ("RENEWALS_TWILIO_AUTH_TOKEN", self.twilio_auth_token.get_secret_value()),
                (
                    "RENEWALS_TWILIO_MESSAGING_SERVICE_SID or RENEWALS_TWILIO_SMS_FROM",
                    self.twilio_messaging_service_sid or self.twilio_sms_from,
                ),
                ("RENEWALS_SENDGRID_API_KEY", self.sendgrid_api_key.get_secret_value()),
            )
            if not value
        ]
        if missing:
            raise ValueError(f"send_mode=live needs {', '.join(missing)}")
        if self.env != "dev" and self.pii_hash_key.get_secret_value() == "dev-only-pii-hash-key":
            raise ValueError("RENEWALS_PII_HASH_KEY must be set outside dev")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings."""
    return Settings()
