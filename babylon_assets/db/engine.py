"""Engines for the store: one code path for SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Table, create_engine, event, literal
from sqlalchemy.dialects import postgresql, sqlite

from babylon_assets.core.window_time import as_utc
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


def naive_utc(moment: datetime) -> datetime:
    """The form timestamps are stored in: UTC without a zone, as Prisma writes them."""
    return as_utc(moment).replace(tzinfo=None)


def new_id() -> str:
    """A TEXT id for a new row (Prisma's ids have no database default)."""
    return uuid.uuid4().hex


def insert_many(connection: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert rows in as few statements as possible; executemany needs one column set per statement."""
    by_columns: dict[frozenset[str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_columns[frozenset(row)].append(row)
    for group in by_columns.values():
        connection.execute(table.insert(), group)


def upsert(
    target: Engine | Connection,
    table: Table,
    keys: list[str],
    rows: Sequence[dict[str, Any]],
    update: Sequence[str],
    increment: str | None = None,
) -> None:
    """Insert rows, or update `update` columns (and add 1 to `increment`) where the keys exist: in a transaction of
    its own on an engine, or inside the caller's on a connection."""
    if not rows:
        return
    dialect_insert = postgresql.insert if target.dialect.name == "postgresql" else sqlite.insert
    statement = dialect_insert(table)
    changes: dict[str, Any] = {name: statement.excluded[name] for name in update}
    if increment is not None:
        changes[increment] = table.c[increment] + literal(1)
    statement = statement.on_conflict_do_update(index_elements=keys, set_=changes)
    if isinstance(target, Connection):
        target.execute(statement, list(rows))
        return
    with target.begin() as connection:
        connection.execute(statement, list(rows))
