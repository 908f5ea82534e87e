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

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bankflow.domain.money import CURRENCY_EXPONENTS
from schemas.topics import RETRY_TIERS_S, TRANSFERS_REQUESTED, all_topics, retry_topic

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
        # A refused value must not print the input: it holds the secrets (SASL and key
        # passwords, the JWT secret) next to the setting at fault.
        hide_input_in_errors=True,
    )

    env: Literal["dev", "test", "staging", "prod"] = "dev"
    state_dir: Path = Field(default_factory=default_state_dir)
    #: Log lines (``bankflow.logs``): one JSON object per line, or text for a terminal;
    #: "auto" is text with ``BANKFLOW_ENV=dev`` and JSON everywhere else.
    log_format: Literal["auto", "json", "text"] = "auto"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

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

    # ---- Kafka security: TLS and SASL for every Kafka client (docs/security.md) ----
    # ``bankflow.bootstrap.kafka_client_config`` turns these into librdkafka's keys and
    # ``faust_broker_options`` into faust's; no client is built without them.
    #: PLAINTEXT (the local stack), SSL (TLS), SASL_PLAINTEXT or SASL_SSL.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    #: Required with SASL_*. SCRAM never sends the password; PLAIN does (so: over TLS).
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    #: The principal of tools (``bankflow ingest``, ``dlq replay``) and of every service
    #: without one of its own below.
    kafka_sasl_username: str = ""
    kafka_sasl_password: SecretStr = SecretStr("")
    #: A principal per service, keyed by its ``bankflow run`` name, so each one's ACLs
    #: grant only what it needs: JSON objects such as ``{"poster": "bankflow-poster"}``
    #: and ``{"poster": "<its password>"}``; a service in one needs an entry in the other.
    kafka_sasl_service_usernames: dict[str, str] = Field(default_factory=dict)
    kafka_sasl_service_passwords: dict[str, SecretStr] = Field(default_factory=dict)
    #: TLS: the PEM bundle of the CA(s) that signed the brokers' certificates (the
    #: system's trust store when unset); a client certificate and key for mutual TLS.
    kafka_ssl_ca_location: Path | None = None
    kafka_ssl_certificate_location: Path | None = None
    kafka_ssl_key_location: Path | None = None
    kafka_ssl_key_password: SecretStr | None = None

    @field_validator("kafka_security_protocol", "kafka_sasl_mechanism", mode="before")
    @classmethod
    def _kafka_names_in_upper_case(cls, value: object) -> object:
        # librdkafka reads "sasl_ssl" as well as "SASL_SSL"; so do we.
        return value.upper() if isinstance(value, str) else value

    @field_validator("currencies")
    @classmethod
    def _currencies_in_the_table(cls, value: list[str]) -> list[str]:
        # The service refuses to start on a currency whose exponent it does not know,
        # rather than open accounts it could not format or parse amounts of.
        unknown = [code for code in value if code not in CURRENCY_EXPONENTS]
        if unknown:
            known = ", ".join(sorted(CURRENCY_EXPONENTS))
            raise ValueError(f"currencies {unknown} are not in the table ({known})")
        return value

    @field_validator(
        "kafka_sasl_mechanism",
        "kafka_ssl_ca_location",
        "kafka_ssl_certificate_location",
        "kafka_ssl_key_location",
        "kafka_ssl_key_password",
        mode="before",
    )
    @classmethod
    def _kafka_empty_is_unset(cls, value: object) -> object:
        # An empty variable (compose's ``${VAR:-}``) means "not set", not the path ".".
        return None if value == "" else value

    @model_validator(mode="after")
    def _check_kafka_security(self) -> Settings:
        _check_kafka_sasl(self)
        _check_kafka_tls(self)
        return self

    def kafka_sasl_credentials(self, service: str) -> tuple[str, SecretStr]:
        """The SASL username and password ``service`` connects with: its own if it has
        one, else the common one."""
        if service in self.kafka_sasl_service_usernames:
            return (
                self.kafka_sasl_service_usernames[service],
                self.kafka_sasl_service_passwords[service],
            )
        return self.kafka_sasl_username, self.kafka_sasl_password

    # ---- end of Kafka security ----

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
    #: The currencies this bank opens accounts in, each one of the domain's table
    #: (``bankflow.domain.money.CURRENCY_EXPONENTS``); each gets its internal accounts.
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

    #: The fraud rule set (see the file's comments); its version goes with each decision.
    fraud_rules: Path = PROJECT_ROOT / "infra" / "fraud_rules.yaml"
    #: Retry tiers in order, name -> delay in seconds: a transient failure goes to
    #: ``transfers.retry.<name>`` of the next tier, after the last to the DLQ.
    retry_tiers: dict[str, int] = Field(default_factory=lambda: dict(RETRY_TIERS_S))
    #: The topics (logical) the retrier may send a retried message back to, whatever its
    #: origin header says: the stages that retry read these. Never a signed topic (an
    #: accepted transfer is only ever the validator's or a reviewer's).
    retry_origins: list[str] = Field(default_factory=lambda: [TRANSFERS_REQUESTED])
    retrier_group: str = "bankflow-retrier"
    #: Held transfers no reviewer decided within this long are rejected (review_timeout).
    review_timeout_s: int = Field(default=72 * 3600, ge=1)
    tracker_group: str = "bankflow-tracker"

    #: The folder the inbox watcher ingests files from (done/ and failed/ beside them).
    inbox: Path = Path("inbox")

    # Service addresses. Loopback by default; containers set BANKFLOW_API_HOST=0.0.0.0.
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    #: Where worker services serve /metrics, /healthz and /readyz; containers set 0.0.0.0.
    metrics_host: str = "127.0.0.1"

    # The consumer-lag exporter (``bankflow run lag-exporter``), also read by ``bankflow lag``.
    lag_exporter_port: int = Field(default=9108, ge=1, le=65535)
    # Each service's own /metrics, /healthz and /readyz port (``Settings.metrics_port``);
    # one per service so they can share a host. 0 binds a free port (tests).
    api_metrics_port: int = Field(default=9101, ge=0, le=65535)
    validator_metrics_port: int = Field(default=9102, ge=0, le=65535)
    retrier_metrics_port: int = Field(default=9103, ge=0, le=65535)
    poster_metrics_port: int = Field(default=9104, ge=0, le=65535)
    relay_metrics_port: int = Field(default=9105, ge=0, le=65535)
    inbox_watcher_metrics_port: int = Field(default=9106, ge=0, le=65535)
    dlq_sink_metrics_port: int = Field(default=9107, ge=0, le=65535)
    tracker_metrics_port: int = Field(default=9109, ge=0, le=65535)
    cache_metrics_port: int = Field(default=9110, ge=0, le=65535)
    #: ``bankflow run all``'s supervisor: restarts and crash loops of the services it runs.
    supervisor_metrics_port: int = Field(default=9111, ge=0, le=65535)
    #: One evaluation of every group this often.
    lag_poll_interval_s: float = Field(default=5.0, gt=0, le=300)
    #: Statuses are judged over this many evaluations (Burrow's window): 12 x 5 s, a minute.
    lag_window_evaluations: int = Field(default=12, ge=2, le=1000)
    #: A partition with lag, no consumer and an offset unchanged this long is STOP.
    lag_stop_after_s: float = Field(default=60.0, gt=0, le=86_400)
    #: Head samples kept per partition to estimate lag in seconds; flat runs take two,
    #: so 120 cover ten minutes of constant traffic at 5 s, far longer when traffic pauses.
    lag_history_points_max: int = Field(default=120, ge=2, le=10_000)

    # Secrets: no usable default outside dev.
    jwt_secret: SecretStr = SecretStr(_DEV_PLACEHOLDER_SECRET)

    # API authentication. Tokens are HS256 JWTs signed with ``jwt_secret``; these name
    # who issued them and for whom, so a token minted for another service is refused.
    jwt_issuer: str = Field(default="bankflow", min_length=1)
    jwt_audience: str = Field(default="bankflow-api", min_length=1)
    #: Short-lived: a stolen access token is useful for at most this long.
    access_token_ttl_s: int = Field(default=900, ge=60, le=3600)
    #: Each refresh token works once and lives this long; a new one comes with each refresh.
    refresh_token_ttl_s: int = Field(default=8 * 3600, ge=300, le=30 * 24 * 3600)
    #: PCI DSS 8.3.4: lock an account after at most 10 failed logins, for at least 30 minutes.
    login_lockout_attempts: int = Field(default=10, ge=1, le=10)
    login_lockout_s: int = Field(default=1800, ge=1800, le=24 * 3600)
    #: After this many failed logins, each further attempt waits ``login_delay_base_ms``,
    #: doubling per failure up to ``login_delay_max_ms`` (a bound a client can wait out).
    login_slowdown_after_attempts: int = Field(default=3, ge=0, le=10)
    login_delay_base_ms: int = Field(default=500, ge=0, le=10_000)
    login_delay_max_ms: int = Field(default=8000, ge=0, le=30_000)
    #: Request bodies larger than this are refused with 413 (the biggest body, a transfer
    #: or a registration, is well under 2 KiB).
    api_body_max_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    #: PostgreSQL connections the API holds at most (per worker process).
    api_db_pool_max: int = Field(default=10, ge=1, le=200)
    #: Requests a minute per signed-in user and per client address (429 beyond). An
    #: address may stand for many users (an office, a carrier's NAT), hence higher.
    api_rate_per_user_per_min: int = Field(default=600, ge=1)
    api_rate_per_address_per_min: int = Field(default=3000, ge=1)
    #: argon2id cost: "default" is argon2-cffi's (RFC 9106 low-memory profile); "test"
    #: is its cheapest profile, so tests hash in microseconds. Refused in staging and prod.
    password_hash_profile: Literal["default", "test"] = "default"  # noqa: S105 - a cost name

    # Signed stage messages (``bankflow.signing``): the key file with each signer's keys.
    # Unset: ``<state_dir>/keys/signing.json``, which ``bankflow stack up`` writes.
    signing_keys_file: Path | None = None

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
        _check_retry_tiers(self.retry_tiers)
        _check_retry_origins(self.retry_origins)
        if self.env in ("staging", "prod") and self.password_hash_profile != "default":  # noqa: S105
            raise ValueError(
                f"BANKFLOW_PASSWORD_HASH_PROFILE={self.password_hash_profile} is for tests; "
                f"BANKFLOW_ENV={self.env} needs the default argon2id cost"
            )
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
    def log_format_chosen(self) -> Literal["json", "text"]:
        """``log_format`` with "auto" decided: text in dev, JSON elsewhere."""
        if self.log_format == "auto":
            return "text" if self.env == "dev" else "json"
        return self.log_format

    @property
    def stack_env_file(self) -> Path:
        return self.state_dir / "stack.env"

    @property
    def signing_keys_path(self) -> Path:
        return self.signing_keys_file or self.state_dir / "keys" / "signing.json"

    def topic(self, name: str) -> str:
        """The full Kafka topic name for one of the names in ``schemas.topics``."""
        return f"{self.topic_prefix}{name}"

    def metrics_port(self, service: str) -> int | None:
        """The port ``service`` (a ``bankflow run`` name) serves its metrics on, if it has one."""
        if service == "lag-exporter":
            return self.lag_exporter_port
        port = getattr(self, f"{service.replace('-', '_')}_metrics_port", None)
        return port if isinstance(port, int) else None

    def all_topics(self) -> tuple[str, ...]:
        """Every topic bankflow uses with these settings' retry tiers (logical names)."""
        return all_topics(self.retry_tiers)


#: At most this many retry tiers: each one is a topic and a wait before the DLQ.
RETRY_TIERS_MAX = 5


def _check_retry_tiers(tiers: dict[str, int]) -> None:
    delays = list(tiers.values())
    if not 1 <= len(tiers) <= RETRY_TIERS_MAX:
        raise ValueError(f"BANKFLOW_RETRY_TIERS needs 1 to {RETRY_TIERS_MAX} tiers")
    for name in tiers:
        retry_topic(name)  # raises on a name that cannot be part of a topic name
    if any(d <= 0 for d in delays) or delays != sorted(delays):
        raise ValueError(f"BANKFLOW_RETRY_TIERS delays must be positive and increasing: {tiers}")


# ---- Kafka security checks (the "Kafka security" block of Settings) ----

_KAFKA_SASL_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")
_KAFKA_TLS_PROTOCOLS = ("SSL", "SASL_SSL")


def _check_kafka_sasl(s: Settings) -> None:
    """SASL settings only with a SASL protocol, and then complete. Messages name the
    variables, never their values."""
    protocol = f"BANKFLOW_KAFKA_SECURITY_PROTOCOL={s.kafka_security_protocol}"
    users, passwords = s.kafka_sasl_service_usernames, s.kafka_sasl_service_passwords
    if s.kafka_security_protocol not in _KAFKA_SASL_PROTOCOLS:
        given = [
            f"BANKFLOW_KAFKA_SASL_{name}"
            for name, value in (
                ("MECHANISM", s.kafka_sasl_mechanism),
                ("USERNAME", s.kafka_sasl_username),
                ("PASSWORD", s.kafka_sasl_password.get_secret_value()),
                ("SERVICE_USERNAMES", users),
                ("SERVICE_PASSWORDS", passwords),
            )
            if value
        ]
        if given:
            raise ValueError(
                f"{', '.join(given)} set, but {protocol} does not authenticate with SASL: "
                "use SASL_SSL (or SASL_PLAINTEXT), or unset them"
            )
        return
    if s.kafka_sasl_mechanism is None:
        raise ValueError(
            f"{protocol} needs BANKFLOW_KAFKA_SASL_MECHANISM: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
        )
    if not s.kafka_sasl_username or not s.kafka_sasl_password.get_secret_value():
        raise ValueError(
            f"{protocol} needs BANKFLOW_KAFKA_SASL_USERNAME and BANKFLOW_KAFKA_SASL_PASSWORD "
            "(the principal of tools and of services without their own)"
        )
    _check_kafka_service_principals(users, passwords)
    in_clear = s.kafka_security_protocol == "SASL_PLAINTEXT" and s.kafka_sasl_mechanism == "PLAIN"
    if in_clear and s.env in ("staging", "prod"):
        raise ValueError(
            f"BANKFLOW_KAFKA_SASL_MECHANISM=PLAIN with {protocol} sends passwords in clear; "
            f"BANKFLOW_ENV={s.env} needs SASL_SSL or a SCRAM mechanism"
        )


def _check_kafka_service_principals(users: dict[str, str], passwords: dict[str, SecretStr]) -> None:
    # Imported here: the registry imports this module for its Settings type.
    from bankflow.registry import BY_NAME

    if set(users) != set(passwords):
        raise ValueError(
            "BANKFLOW_KAFKA_SASL_SERVICE_USERNAMES and BANKFLOW_KAFKA_SASL_SERVICE_PASSWORDS "
            f"must name the same services; in only one: {sorted(set(users) ^ set(passwords))}"
        )
    unknown = sorted(set(users) - set(BY_NAME))
    if unknown:
        raise ValueError(
            f"BANKFLOW_KAFKA_SASL_SERVICE_USERNAMES names no bankflow service: {unknown}; "
            f"known: {sorted(BY_NAME)}"
        )
    empty = sorted(n for n in users if not users[n] or not passwords[n].get_secret_value())
    if empty:
        raise ValueError(
            f"BANKFLOW_KAFKA_SASL_SERVICE_USERNAMES/PASSWORDS: empty entries for {empty}"
        )


def _check_kafka_tls(s: Settings) -> None:
    """TLS files only with a TLS protocol; each one given must be a file; mutual TLS
    needs the certificate and its key together."""
    locations = {
        "BANKFLOW_KAFKA_SSL_CA_LOCATION": s.kafka_ssl_ca_location,
        "BANKFLOW_KAFKA_SSL_CERTIFICATE_LOCATION": s.kafka_ssl_certificate_location,
        "BANKFLOW_KAFKA_SSL_KEY_LOCATION": s.kafka_ssl_key_location,
    }
    given = [name for name, path in locations.items() if path is not None]
    if s.kafka_ssl_key_password is not None:
        given.append("BANKFLOW_KAFKA_SSL_KEY_PASSWORD")
    if s.kafka_security_protocol not in _KAFKA_TLS_PROTOCOLS:
        if given:
            raise ValueError(
                f"{', '.join(given)} set, but BANKFLOW_KAFKA_SECURITY_PROTOCOL="
                f"{s.kafka_security_protocol} does not use TLS: use SSL or SASL_SSL, or unset them"
            )
        return
    for name, path in locations.items():
        if path is not None and not path.is_file():
            raise ValueError(f"{name}={path}: no such file")
    if (s.kafka_ssl_certificate_location is None) != (s.kafka_ssl_key_location is None):
        raise ValueError(
            "mutual TLS needs BANKFLOW_KAFKA_SSL_CERTIFICATE_LOCATION and "
            "BANKFLOW_KAFKA_SSL_KEY_LOCATION together"
        )
    if s.kafka_ssl_key_password is not None and s.kafka_ssl_key_location is None:
        raise ValueError(
            "BANKFLOW_KAFKA_SSL_KEY_PASSWORD given without BANKFLOW_KAFKA_SSL_KEY_LOCATION"
        )


# ---- end of Kafka security checks ----


#: What a retried message may go back to: topics whose stages decide again.
RETRYABLE_ORIGINS = frozenset({TRANSFERS_REQUESTED})


def _check_retry_origins(origins: list[str]) -> None:
    refused = sorted(set(origins) - RETRYABLE_ORIGINS)
    if not origins or refused:
        raise ValueError(
            f"BANKFLOW_RETRY_ORIGINS may name only {sorted(RETRYABLE_ORIGINS)} (a topic "
            f"whose stage decides again); refused: {refused or 'an empty list'}"
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
