"""Runtime settings: the only reader of the process environment."""

from __future__ import annotations

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
    dispatch_batch_size: Annotated[int, Field(gt=0)] = 1_000

    twilio_account_sid: str = ""
    twilio_auth_token: SecretStr = SecretStr("")
    twilio_base_url: str = "https://api.twilio.com"
    twilio_messaging_service_sid: str = ""
    sendgrid_api_key: SecretStr = SecretStr("")
    sendgrid_host: str = "https://api.sendgrid.com"
    sendgrid_from_email: str = "reminders@example.invalid"

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
