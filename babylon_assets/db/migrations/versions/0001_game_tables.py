"""The game's tables, created only in a store of our own (never in a game database).

A game database (one with the game's "User" table) is left exactly as it is: its tables belong to the
game's Prisma migrations. In an embedded or simulator store the tables are created as the models
define them, which are the game's schema verbatim; a change of the game's schema gets its own
revision here.

Revision ID: 0001_game_tables
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

from alembic import op

from babylon_assets.db.inspection import plan_game_tables
from babylon_assets.db.schema import GAME_TABLES

revision = "0001_game_tables"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if plan_game_tables(bind).create:
        for table in GAME_TABLES:
            table.create(bind, checkfirst=True)


def downgrade() -> None:
    bind = op.get_bind()
    if not plan_game_tables(bind).is_game_database:
        for table in reversed(GAME_TABLES):
            table.drop(bind, checkfirst=True)
