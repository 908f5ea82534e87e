"""Kafka security settings: what every client is given, what start-up refuses, and that
no code builds a Kafka client but through ``bankflow.bootstrap``.
"""

from __future__ import annotations

import ast
import ssl
import subprocess
from pathlib import Path
from typing import Any

import faust
import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from pydantic import ValidationError

from bankflow import bootstrap, logs
from bankflow.settings import PROJECT_ROOT, Settings

SECRET = "s3cr3t-never-printed"


@pytest.fixture
def pem(tmp_path: Path) -> Path:
    """A file where a PEM would be: the settings check that it is a file, no more."""
    path = tmp_path / "ca.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    return path


def make(**values: Any) -> Settings:
    return Settings(_env_file=None, kafka_bootstrap="b1:9093,b2:9093", **values)


def sasl(protocol: str = "SASL_SSL", **values: Any) -> Settings:
    return make(
        kafka_security_protocol=protocol,
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="bankflow-tools",
        kafka_sasl_password=SECRET,
        **values,
    )


# ------------------------------------------------------------ librdkafka's keys


def test_plaintext_is_the_default_and_carries_no_credentials() -> None:
    assert bootstrap.kafka_client_config(make()) == {
        "bootstrap.servers": "b1:9093,b2:9093",
        "security.protocol": "PLAINTEXT",
    }


def test_ssl_gives_the_ca_and_the_client_certificate(pem: Path) -> None:
    config = bootstrap.kafka_client_config(
        make(
            kafka_security_protocol="SSL",
            kafka_ssl_ca_location=pem,
            kafka_ssl_certificate_location=pem,
            kafka_ssl_key_location=pem,
            kafka_ssl_key_password=SECRET,
        )
    )
    assert config == {
        "bootstrap.servers": "b1:9093,b2:9093",
        "security.protocol": "SSL",
        "ssl.ca.location": str(pem),
        "ssl.certificate.location": str(pem),
        "ssl.key.location": str(pem),
        "ssl.key.password": SECRET,
    }


def test_ssl_without_files_trusts_the_system_store() -> None:
    config = bootstrap.kafka_client_config(make(kafka_security_protocol="SSL"))
    assert config == {"bootstrap.servers": "b1:9093,b2:9093", "security.protocol": "SSL"}


def test_sasl_plaintext_gives_mechanism_and_credentials_and_no_tls() -> None:
    config = bootstrap.kafka_client_config(sasl("SASL_PLAINTEXT"), service="bankflow")
    assert config == {
        "bootstrap.servers": "b1:9093,b2:9093",
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "bankflow-tools",
        "sasl.password": SECRET,
    }


def test_sasl_ssl_gives_both(pem: Path) -> None:
    config = bootstrap.kafka_client_config(sasl(kafka_ssl_ca_location=pem), service="bankflow")
    assert config["security.protocol"] == "SASL_SSL"
    assert config["sasl.username"] == "bankflow-tools"
    assert config["ssl.ca.location"] == str(pem)


def test_names_in_lower_case_are_read_as_librdkafka_reads_them() -> None:
    s = make(
        kafka_security_protocol="sasl_ssl",
        kafka_sasl_mechanism="scram-sha-256",
        kafka_sasl_username="u",
        kafka_sasl_password=SECRET,
    )
    assert (s.kafka_security_protocol, s.kafka_sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-256")


def test_a_service_with_its_own_principal_connects_as_itself(monkeypatch) -> None:
    s = sasl(
        kafka_sasl_service_usernames={"poster": "bankflow-poster"},
        kafka_sasl_service_passwords={"poster": "poster-" + SECRET},
    )
    poster = bootstrap.kafka_client_config(s, service="poster")
    assert (poster["sasl.username"], poster["sasl.password"]) == (
        "bankflow-poster",
        "poster-" + SECRET,
    )
    # Without its own, a service (or a tool) takes the common principal.
    assert bootstrap.kafka_client_config(s, service="relay")["sasl.username"] == "bankflow-tools"
    # By default the principal is the process's service, as `bankflow run poster` sets it.
    monkeypatch.setattr(logs, "_service", "poster")
    assert bootstrap.kafka_client_config(s)["sasl.username"] == "bankflow-poster"


def test_the_environment_variables_are_the_documented_ones(monkeypatch, pem: Path) -> None:
    for name, value in {
        "BANKFLOW_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "BANKFLOW_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "BANKFLOW_KAFKA_SASL_USERNAME": "bankflow-tools",
        "BANKFLOW_KAFKA_SASL_PASSWORD": SECRET,
        "BANKFLOW_KAFKA_SASL_SERVICE_USERNAMES": '{"validator": "bankflow-validator"}',
        "BANKFLOW_KAFKA_SASL_SERVICE_PASSWORDS": '{"validator": "v-' + SECRET + '"}',
        "BANKFLOW_KAFKA_SSL_CA_LOCATION": str(pem),
        "BANKFLOW_KAFKA_SSL_CERTIFICATE_LOCATION": "",  # empty: not set
    }.items():
        monkeypatch.setenv(name, value)
    s = Settings(_env_file=None)
    config = bootstrap.kafka_client_config(s, service="validator")
    assert config["sasl.username"] == "bankflow-validator"
    assert config["sasl.password"] == "v-" + SECRET
    assert config["ssl.ca.location"] == str(pem)
    assert "ssl.certificate.location" not in config


def test_passwords_never_show_in_the_settings_repr() -> None:
    s = sasl(
        kafka_sasl_service_usernames={"poster": "p"},
        kafka_sasl_service_passwords={"poster": SECRET},
    )
    assert SECRET not in repr(s)
    assert SECRET not in str(s.model_dump())


# ------------------------------------------------------------ refused at start-up


def _refused(pem: Path, missing: Path) -> list[tuple[dict[str, Any], str]]:
    creds = {"kafka_sasl_username": "u", "kafka_sasl_password": SECRET}
    scram = {"kafka_sasl_mechanism": "SCRAM-SHA-256", **creds}
    return [
        ({"kafka_security_protocol": "TLS"}, "kafka_security_protocol"),
        ({"kafka_security_protocol": "SASL_SSL", **creds}, "BANKFLOW_KAFKA_SASL_MECHANISM"),
        (
            {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "GSSAPI", **creds},
            "kafka_sasl_mechanism",
        ),
        (
            {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_mechanism": "PLAIN"},
            "needs BANKFLOW_KAFKA_SASL_USERNAME and BANKFLOW_KAFKA_SASL_PASSWORD",
        ),
        (
            {"kafka_security_protocol": "SASL_SSL", **scram, "kafka_sasl_password": ""},
            "needs BANKFLOW_KAFKA_SASL_USERNAME and BANKFLOW_KAFKA_SASL_PASSWORD",
        ),
        (creds, "BANKFLOW_KAFKA_SASL_USERNAME, BANKFLOW_KAFKA_SASL_PASSWORD set, but"),
        ({"kafka_ssl_ca_location": pem}, "BANKFLOW_KAFKA_SSL_CA_LOCATION set, but"),
        (
            {"kafka_security_protocol": "SASL_PLAINTEXT", **scram, "kafka_ssl_ca_location": pem},
            "does not use TLS",
        ),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_ca_location": missing},
            "BANKFLOW_KAFKA_SSL_CA_LOCATION=",
        ),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_key_location": pem.parent},
            "BANKFLOW_KAFKA_SSL_KEY_LOCATION=",
        ),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_certificate_location": pem},
            "needs BANKFLOW_KAFKA_SSL_CERTIFICATE_LOCATION and BANKFLOW_KAFKA_SSL_KEY_LOCATION",
        ),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_key_password": SECRET},
            "BANKFLOW_KAFKA_SSL_KEY_PASSWORD given without",
        ),
        (
            {
                "kafka_security_protocol": "SASL_SSL",
                **scram,
                "kafka_sasl_service_usernames": {"poster": "p"},
            },
            "must name the same services",
        ),
        (
            {
                "kafka_security_protocol": "SASL_SSL",
                **scram,
                "kafka_sasl_service_usernames": {"postr": "p"},
                "kafka_sasl_service_passwords": {"postr": SECRET},
            },
            "names no bankflow service: ['postr']",
        ),
        (
            {
                "kafka_security_protocol": "SASL_SSL",
                **scram,
                "kafka_sasl_service_usernames": {"poster": ""},
                "kafka_sasl_service_passwords": {"poster": SECRET},
            },
            "empty entries for ['poster']",
        ),
        (
            {
                "env": "prod",
                "jwt_secret": "k" * 32,
                "kafka_security_protocol": "SASL_PLAINTEXT",
                **creds,
                "kafka_sasl_mechanism": "PLAIN",
            },
            "sends passwords in clear",
        ),
    ]


def test_bad_combinations_are_refused_naming_the_setting(pem: Path, tmp_path: Path) -> None:
    for values, message in _refused(pem, tmp_path / "missing.pem"):
        with pytest.raises(ValidationError) as refused:
            make(**values)
        text = str(refused.value)
        assert message in text, (values, text)
        assert SECRET not in text, "a refused setting must not print a secret"


def test_outside_prod_plain_over_plaintext_is_allowed_for_a_local_broker() -> None:
    s = make(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="u",
        kafka_sasl_password=SECRET,
    )
    assert s.kafka_sasl_mechanism == "PLAIN"


# ------------------------------------------------------------ every client gets them


def test_producers_consumers_and_admins_carry_the_security_settings(monkeypatch) -> None:
    # The client classes are replaced with dict, so each factory returns its config.
    for name in ("Producer", "Consumer", "AdminClient"):
        monkeypatch.setattr(bootstrap, name, dict)
    s = sasl("SASL_PLAINTEXT")
    common = bootstrap.kafka_client_config(s)
    clients: list[Any] = [
        bootstrap.kafka_producer(s),
        bootstrap.kafka_producer(s, transactional_id="t", **{"linger.ms": 1}),
        bootstrap.kafka_consumer(s, group_id="g"),
        bootstrap.kafka_admin(s, **{"log_level": 0}),
    ]
    for config in clients:
        assert config.items() >= common.items()


@pytest.mark.parametrize("key", ["bootstrap.servers", "security.protocol", "sasl.username"])
def test_tuning_cannot_replace_brokers_or_credentials(monkeypatch, key: str) -> None:
    monkeypatch.setattr(bootstrap, "Producer", dict)
    with pytest.raises(ValueError, match="come from the settings"):
        bootstrap.kafka_producer(sasl("SASL_PLAINTEXT"), **{key: "x"})


# ------------------------------------------------------------ faust


def test_faust_gets_nothing_extra_on_plaintext() -> None:
    options = bootstrap.faust_broker_options(make())
    assert options == {"broker": ["kafka://b1:9093", "kafka://b2:9093"], "broker_credentials": None}


def _recorded_ssl_context(monkeypatch) -> list[dict[str, Any]]:
    """aiokafka's helper, which reads the files, replaced by one that records its arguments."""
    calls: list[dict[str, Any]] = []

    def create_ssl_context(**kwargs: Any) -> ssl.SSLContext:
        calls.append(kwargs)
        return ssl.create_default_context()

    monkeypatch.setattr("aiokafka.helpers.create_ssl_context", create_ssl_context)
    return calls


def test_faust_gets_the_sasl_principal_and_the_tls_context(monkeypatch, pem: Path) -> None:
    calls = _recorded_ssl_context(monkeypatch)
    s = sasl(
        kafka_ssl_ca_location=pem,
        kafka_sasl_service_usernames={"cache": "bankflow-cache"},
        kafka_sasl_service_passwords={"cache": "c-" + SECRET},
    )
    credentials = bootstrap.faust_broker_options(s, service="cache")["broker_credentials"]
    assert isinstance(credentials, faust.SASLCredentials)
    assert calls == [{"cafile": pem, "certfile": None, "keyfile": None, "password": None}]
    # What faust hands aiokafka, in faust's own words.
    auth = credentials_to_aiokafka_auth(credentials)
    assert auth["security_protocol"] == "SASL_SSL"
    assert auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == (
        "bankflow-cache",
        "c-" + SECRET,
    )
    assert isinstance(auth["ssl_context"], ssl.SSLContext)
    assert SECRET not in repr(credentials)


def test_faust_over_sasl_plaintext_has_no_tls() -> None:
    credentials = bootstrap.faust_broker_options(sasl("SASL_PLAINTEXT"), service="bankflow")[
        "broker_credentials"
    ]
    auth = credentials_to_aiokafka_auth(credentials)
    assert (auth["security_protocol"], auth["ssl_context"]) == ("SASL_PLAINTEXT", None)


def test_faust_over_ssl_gets_the_client_certificate(monkeypatch, pem: Path) -> None:
    calls = _recorded_ssl_context(monkeypatch)
    s = make(
        kafka_security_protocol="SSL",
        kafka_ssl_certificate_location=pem,
        kafka_ssl_key_location=pem,
        kafka_ssl_key_password=SECRET,
    )
    credentials = bootstrap.faust_broker_options(s)["broker_credentials"]
    assert isinstance(credentials, faust.SSLCredentials)
    assert calls == [{"cafile": None, "certfile": pem, "keyfile": pem, "password": SECRET}]
    assert credentials_to_aiokafka_auth(credentials)["security_protocol"] == "SSL"


# ------------------------------------------------------------ one place builds clients

#: Constructors of Kafka clients: confluent-kafka's, aiokafka's and faust's app.
CLIENT_CLASSES = frozenset(
    {
        "Producer",
        "Consumer",
        "AdminClient",
        "SerializingProducer",
        "DeserializingConsumer",
        "AIOKafkaProducer",
        "AIOKafkaConsumer",
        "AIOKafkaAdminClient",
    }
)


def _called_name(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    return func.attr if isinstance(func, ast.Attribute) else ""


def _hand_built_clients(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        where = f"{path.relative_to(PROJECT_ROOT)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Constant) and node.value in ("bootstrap.servers", "sasl.password"):
            found.append(f"{where} spells {node.value!r}")
        if not isinstance(node, ast.Call):
            continue
        name = _called_name(node)
        if name in CLIENT_CLASSES:
            found.append(f"{where} builds a {name}")
        if name == "App" and any(k.arg in ("broker", "broker_credentials") for k in node.keywords):
            found.append(f"{where} gives a faust app its broker by hand")
        if any(k.arg in ("bootstrap_servers", "security_protocol") for k in node.keywords):
            found.append(f"{where} configures an aiokafka client by hand")
    return found


def test_every_kafka_client_is_built_by_bankflow_bootstrap() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "*.py"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    exempt = {"bankflow/bootstrap.py", "tests/unit/test_kafka_security.py"}
    sources = [PROJECT_ROOT / p for p in tracked if p not in exempt]
    assert len(sources) > 100, "the source tree was not found"
    found = [hit for path in sources if path.exists() for hit in _hand_built_clients(path)]
    assert found == [], "build Kafka clients with bankflow.bootstrap, which adds TLS and SASL"
