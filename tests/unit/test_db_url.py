import pytest

from infra.db import sqlalchemy_url


@pytest.mark.parametrize(
    "url",
    ["postgresql://u:p@h:1/d", "postgres://u:p@h:1/d", "postgresql+psycopg://u:p@h:1/d"],
)
def test_plain_urls_become_psycopg3_urls(url: str) -> None:
    assert sqlalchemy_url(url) == "postgresql+psycopg://u:p@h:1/d"


def test_a_non_postgres_url_is_refused_with_the_variable_name() -> None:
    with pytest.raises(ValueError, match="BANKFLOW_DATABASE_URL"):
        sqlalchemy_url("mysql://u:p@h/d")
