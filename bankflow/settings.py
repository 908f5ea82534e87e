"""The one settings object every service and tool reads.

Values come from ``BANKFLOW_*`` environment variables and, when present, from
``.local/stack.env`` (written by ``bankflow stack up``); the environment wins.
Nothing else in bankflow reads the environment for configuration.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The repository root when bankflow runs from a checkout (the usual case).
PROJECT_ROOT = Path(__file__).resolve().parent.parent

#: Secrets shorter than this are refused outside dev: 32 bytes is the HMAC-SHA256 key size.
SECRET_LENGTH_MIN = 32

_DEV_PLACEHOLDER_SECRET = "dev-only-insecure-secret-do-not-use-in-production"  # noqa: S105


def default_state_dir() -> Path:
    """Where the local stack keeps its servers, data, logs and ``stack.env``."""
    # Read here, before the settings object exists, because it says where the
    # settings file itself lives.
    return Path(os.environ.get("BANKFLOW_STATE_DIR", PROJECT_ROOT / ".local"))


class Settings(BaseSettings):
    """Configuration for every bankflow service, tool and test."""

    model_config = SettingsConfigDict(
        env_prefix="BANKFLOW_",
        env_file=default_state_dir() / "stack.env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    env: Literal["dev", "test", "staging", "prod"] = "dev"
    state_dir: Path = Field(default_factory=default_state_dir)

    # Kafka. The bootstrap address follows the local broker's port unless set.
    kafka_bootstrap: str = ""
    kafka_port: int = 19092
    kafka_controller_port: int = 19093
    kafka_version: str = "4.1.1"
    kafka_heap_mb: int = 512
    topic_prefix: str = ""
    topic_partitions: int = Field(default=6, ge=1, le=1024)
    topic_replication: int = Field(default=1, ge=1)
    topic_retention_ms: int = 7 * 24 * 3600 * 1000

    # PostgreSQL. ``db_schema`` lets tests (and tenants) live side by side in one database.
    database_url: str = ""
    postgres_port: int = 15432
    db_schema: str = Field(default="public", pattern=r"^[a-z_][a-z0-9_]{0,62}$")

    # Redis. Every key bankflow writes starts with ``redis_prefix``.
    redis_url: str = ""
    redis_port: int = 16379
    redis_prefix: str = "bankflow:"

    # The ledger. IBANs of new accounts: country and bank code (the BBAN's bank part).
    iban_country: str = Field(default="DE", pattern=r"^[A-Z]{2}$")
    iban_bank_code: str = Field(default="99990000", pattern=r"^[A-Z0-9]{1,12}$")
    #: The currencies the bank holds accounts in; each gets its internal accounts.
    currencies: list[str] = Field(default_factory=lambda: ["EUR", "USD", "GBP", "CHF"])

    #: Tells instances of one service apart (the validator's transactional id); each
    #: running instance needs its own, and a restarted one should reuse its old one.
    instance_id: str = Field(default="0", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    validator_group: str = "bankflow-validator"
    # The validator: one Kafka transaction per batch of this many requests or this long.
    validator_batch_max: int = Field(default=1000, ge=1, le=50_000)
    validator_batch_wait_ms: int = Field(default=50, ge=1, le=10_000)

    # The poster: a batch closes at this many messages or after this long.
    poster_group: str = "bankflow-poster"
    poster_batch_max: int = Field(default=2000, ge=1, le=50_000)
    poster_batch_wait_ms: int = Field(default=50, ge=1, le=10_000)
    # The outbox relay: rows published per round, and the idle poll interval.
    relay_batch_max: int = Field(default=2000, ge=1, le=50_000)
    relay_idle_poll_ms: int = Field(default=50, ge=1, le=10_000)

    #: The folder the inbox watcher ingests files from (done/ and failed/ beside them).
    inbox: Path = Path("inbox")

    # Service addresses. Loopback by default; containers set BANKFLOW_API_HOST=0.0.0.0.
    api_host: str = "127.0.0.1"
    api_port: int = 8080

    # Secrets: no usable default outside dev.
    jwt_secret: SecretStr = SecretStr(_DEV_PLACEHOLDER_SECRET)

    @model_validator(mode="after")
    def _derive_and_check(self) -> Settings:
        if not self.kafka_bootstrap:
            self.kafka_bootstrap = f"127.0.0.1:{self.kafka_port}"
        if not self.database_url:
            self.database_url = (
                f"postgresql://bankflow:bankflow@127.0.0.1:{self.postgres_port}/bankflow"
            )
        if not self.redis_url:
            self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        if self.env != "dev":
            secret = self.jwt_secret.get_secret_value()
            if secret == _DEV_PLACEHOLDER_SECRET or len(secret) < SECRET_LENGTH_MIN:
                raise ValueError(
                    f"BANKFLOW_JWT_SECRET must be set to a random value of at least "
                    f"{SECRET_LENGTH_MIN} characters when BANKFLOW_ENV={self.env}; "
                    "the placeholder is only accepted with BANKFLOW_ENV=dev"
                )
        return self

    @property
    def stack_env_file(self) -> Path:
        return self.state_dir / "stack.env"

    def topic(self, name: str) -> str:
        """The full Kafka topic name for one of the names in ``schemas.topics``."""
        return f"{self.topic_prefix}{name}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
