from pathlib import Path

import pytest
from pydantic import ValidationError

from bankflow.settings import SECRET_LENGTH_MIN, Settings


def test_addresses_follow_the_configured_ports(tmp_path: Path) -> None:
    s = Settings(
        _env_file=None, state_dir=tmp_path, kafka_port=29092, postgres_port=25432, redis_port=26379
    )
    assert s.kafka_bootstrap == "127.0.0.1:29092"
    assert s.database_url.endswith("@127.0.0.1:25432/bankflow")
    assert s.redis_url == "redis://127.0.0.1:26379/0"


def test_environment_wins_over_the_stack_env_file(tmp_path: Path, monkeypatch) -> None:
    env_file = tmp_path / "stack.env"
    env_file.write_text("BANKFLOW_KAFKA_BOOTSTRAP=file:1\nBANKFLOW_REDIS_URL=redis://file:2/0\n")
    monkeypatch.setenv("BANKFLOW_KAFKA_BOOTSTRAP", "env:1")
    s = Settings(_env_file=env_file)
    assert s.kafka_bootstrap == "env:1"
    assert s.redis_url == "redis://file:2/0"


def test_topic_names_carry_the_prefix() -> None:
    assert Settings(_env_file=None, topic_prefix="t1.").topic("transfers.accepted") == (
        "t1.transfers.accepted"
    )


@pytest.mark.parametrize("env", ["staging", "prod", "test"])
def test_outside_dev_the_placeholder_secret_is_refused(env: str) -> None:
    with pytest.raises(ValidationError, match="BANKFLOW_JWT_SECRET"):
        Settings(_env_file=None, env=env)


def test_outside_dev_a_short_secret_is_refused() -> None:
    with pytest.raises(ValidationError, match="at least"):
        Settings(_env_file=None, env="prod", jwt_secret="x" * (SECRET_LENGTH_MIN - 1))


def test_outside_dev_a_long_random_secret_is_accepted() -> None:
    s = Settings(_env_file=None, env="prod", jwt_secret="k" * SECRET_LENGTH_MIN)
    assert s.jwt_secret.get_secret_value() == "k" * SECRET_LENGTH_MIN


def test_the_secret_never_shows_in_repr() -> None:
    s = Settings(_env_file=None, env="prod", jwt_secret="s3cr3t" * 8)
    assert "s3cr3t" not in repr(s)


@pytest.mark.parametrize("schema", ["Public", "1abc", "a-b", "x;drop table t"])
def test_db_schema_must_be_a_plain_identifier(schema: str) -> None:
    with pytest.raises(ValidationError, match="db_schema"):
        Settings(_env_file=None, db_schema=schema)


def test_the_retrier_may_send_back_only_to_topics_whose_stage_decides_again() -> None:
    assert Settings(_env_file=None).retry_origins == ["transfers.requested"]
    for refused in (["transfers.accepted"], ["transfers.review"], []):
        with pytest.raises(ValueError, match="BANKFLOW_RETRY_ORIGINS"):
            Settings(_env_file=None, retry_origins=refused)


def test_the_held_currencies_come_from_the_domain_table(monkeypatch) -> None:
    assert Settings(_env_file=None).currencies == ["EUR", "USD", "GBP", "CHF"]
    monkeypatch.setenv("BANKFLOW_CURRENCIES", '["EUR","JPY","KWD"]')
    assert Settings(_env_file=None).currencies == ["EUR", "JPY", "KWD"]
    monkeypatch.setenv("BANKFLOW_CURRENCIES", '["EUR","XYZ"]')
    with pytest.raises(ValidationError, match=r"\['XYZ'\] are not in the table"):
        Settings(_env_file=None)
