"""Migrations apply to a schema of their own and are idempotent."""

from __future__ import annotations

from alembic.script import ScriptDirectory

from bankflow.settings import Settings
from infra.db import alembic_config, current_revision, migrate


def test_migrate_reaches_head_and_a_second_run_changes_nothing(settings: Settings, db) -> None:
    head = ScriptDirectory.from_config(alembic_config(settings)).get_current_head()
    assert current_revision(settings) == head
    migrate(settings)
    assert current_revision(settings) == head
    row = db.execute(
        "select count(*) from information_schema.tables where table_schema = %s",
        (settings.db_schema,),
    ).fetchone()
    assert row is not None and row[0] >= 1  # at least alembic_version lives in the test's schema
