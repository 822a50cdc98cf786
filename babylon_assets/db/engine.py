"""Engines for the store: one code path for SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event

from babylon_assets.db.schema import OUR_SCHEMA
from babylon_assets.db.url import DatabaseTarget


def schema_translate_map(target: DatabaseTarget) -> dict[str | None, str | None]:
    """Where each metadata schema lives: ours in `babylon_assets` (main on SQLite), the game's in its own."""
    if target.is_sqlite:
        return {OUR_SCHEMA: None}
    return {None: target.game_schema, OUR_SCHEMA: OUR_SCHEMA}


def make_engine(target: DatabaseTarget, **engine_options: Any) -> Engine:
    """An engine whose connections place the game's and our tables in the right schemas."""
    if target.is_sqlite:
        engine = create_engine(target.url, connect_args={"timeout": 30}, **engine_options)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            # WAL lets Dagster runs read while the simulator or recorder writes.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

    else:
        engine = create_engine(target.url, pool_pre_ping=True, **engine_options)
    return engine.execution_options(schema_translate_map=schema_translate_map(target))
