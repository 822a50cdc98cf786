"""What a database already holds: is it a game database, and which game tables does it lack."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, inspect

from babylon_assets.db.schema import GAME_TABLE_NAMES, GAME_USER_TABLE


class GameSchemaError(RuntimeError):
    """The database is a game database whose tables do not match what the platform reads."""


@dataclass(frozen=True, slots=True)
class GameTablesPlan:
    """What the migration does with the game's tables in this database."""

    is_game_database: bool
    present: frozenset[str]
    create: bool


def game_schema_of(connection: Connection) -> str | None:
    """The schema holding the game's tables on this connection (None: the default one)."""
    translate = connection.get_execution_options().get("schema_translate_map") or {}
    return translate.get(None)


def plan_game_tables(connection: Connection) -> GameTablesPlan:
    """Decide whether to create the game's tables: only where none of them and no "User" exist."""
    names = set(inspect(connection).get_table_names(schema=game_schema_of(connection)))
    is_game = GAME_USER_TABLE in names
    present = frozenset(GAME_TABLE_NAMES & names)
    missing = sorted(GAME_TABLE_NAMES - names)
    if is_game and missing:
        raise GameSchemaError(
            f'this is a game database (it has the "User" table) but lacks {", ".join(missing)}; '
            "the platform never creates tables in a game database: run the game's Prisma migrations"
        )
    if present and missing and not is_game:
        raise GameSchemaError(
            f"the database has some of the game's tables ({', '.join(sorted(present))}) but not "
            f"{', '.join(missing)}; point DATABASE_URL at a complete game database or an empty one"
        )
    return GameTablesPlan(is_game_database=is_game, present=present, create=not present)
