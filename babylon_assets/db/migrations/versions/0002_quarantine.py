"""Our schema and its first table: quarantined game rows with their reasons.

Revision ID: 0002_quarantine
Revises: 0001_game_tables
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from babylon_assets.db.schema import OUR_SCHEMA

revision = "0002_quarantine"
down_revision = "0001_game_tables"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "quarantined_trajectories",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("trajectory_row_id", sa.Text(), nullable=False),
        sa.Column("trajectory_id", sa.Text(), nullable=True),
        sa.Column("window_id", sa.String(50), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("times_seen", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.UniqueConstraint("trajectory_row_id", "reason", name="quarantined_trajectories_row_reason_key"),
        schema=OUR_SCHEMA,
    )
    op.create_index(
        "quarantined_trajectories_window_idx",
        "quarantined_trajectories",
        ["window_id"],
        schema=OUR_SCHEMA,
    )


def downgrade() -> None:
    op.drop_table("quarantined_trajectories", schema=OUR_SCHEMA)
