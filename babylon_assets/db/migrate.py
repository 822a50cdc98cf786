"""Bring a store's schema up to date with Alembic, safely from several processes at once."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

from babylon_assets.db.schema import OUR_SCHEMA

VERSION_TABLE = "babylon_alembic_version"
# Any constant works: it only has to be the same in every process that migrates this database.
_MIGRATION_LOCK_KEY = 0x0BAB7105


def _alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", "babylon_assets.db:migrations")
    config.attributes["connection"] = connection
    config.attributes["version_table_schema"] = None if connection.dialect.name == "sqlite" else OUR_SCHEMA
    return config


def head_revision() -> str:
    """The newest revision the code knows."""
    config = Config()
    config.set_main_option("script_location", "babylon_assets.db:migrations")
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None before the first upgrade."""
    with engine.connect() as connection:
        schema = None if connection.dialect.name == "sqlite" else OUR_SCHEMA
        context = MigrationContext.configure(
            connection, opts={"version_table": VERSION_TABLE, "version_table_schema": schema}
        )
        return context.get_current_revision()


def upgrade_to_head(engine: Engine) -> None:
    """Create or update our schema (and the game's tables in a store of our own) to the newest revision."""
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Dagster may start several runs at once; one migrates, the others wait and find it done.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
            connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{OUR_SCHEMA}"'))
        command.upgrade(_alembic_config(connection), "head")
