"""Database migrations (Alembic), run by ``bankflow migrate`` and by the test fixtures."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from bankflow.bootstrap import db_connect
from bankflow.ledger.accounts import ensure_internal_accounts
from bankflow.settings import Settings

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def sqlalchemy_url(database_url: str) -> str:
    """The SQLAlchemy URL for psycopg 3 from a plain ``postgresql://`` URL."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql+psycopg://" + database_url[len(prefix) :]
    raise ValueError(f"BANKFLOW_DATABASE_URL must be a postgresql:// URL, got {database_url!r}")


def alembic_config(settings: Settings) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Alembic's config is an INI file underneath: a literal % must be doubled.
    url = sqlalchemy_url(settings.database_url)
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["db_schema"] = settings.db_schema
    return config


def migrate(settings: Settings, revision: str = "head") -> None:
    """Bring the configured schema up to ``revision`` and open the bank's own accounts.

    Both steps are idempotent. The internal accounts (cash, settlement, fees,
    suspense per currency) are where money enters and leaves: never by editing
    a balance, always by a transfer from or to one of them.
    """
    command.upgrade(alembic_config(settings), revision)
    if revision == "head":
        with db_connect(settings) as conn:
            ensure_internal_accounts(conn, settings)


def current_revision(settings: Settings) -> str | None:
    engine = create_engine(sqlalchemy_url(settings.database_url))
    try:
        with engine.connect() as conn:
            row = conn.execute(
                # db_schema is a validated plain identifier (see Settings), safe to quote in.
                text(f'select version_num from "{settings.db_schema}".alembic_version')  # noqa: S608
            ).first()
    except SQLAlchemyError:  # no version table yet means "no revision"
        return None
    finally:
        engine.dispose()
    return str(row[0]) if row else None
