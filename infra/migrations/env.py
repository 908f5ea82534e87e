"""Alembic environment: migrates the schema named by the settings (``public`` by default).

Tests give each test its own schema, so migrations never name a schema themselves;
they run with ``search_path`` set to the target schema.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, text

config = context.config
schema = config.attributes.get("db_schema", "public")


def run_migrations_online() -> None:
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as connection:
        connection.execute(text(f'create schema if not exists "{schema}"'))
        connection.execute(text(f'set search_path to "{schema}"'))
        connection.commit()
        context.configure(
            connection=connection,
            version_table_schema=schema,
            transaction_per_migration=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run `bankflow migrate`")
run_migrations_online()
