"""Excluded rows with their reasons, one row each: every row of a window is used, excluded or quarantined.

Revision ID: 0007_excluded_trajectories
Revises: 0006_evaluation_plays
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from babylon_assets.db.schema import OUR_SCHEMA

revision = "0007_excluded_trajectories"
down_revision = "0006_evaluation_plays"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "excluded_trajectories",
        sa.Column("window_id", sa.String(50), primary_key=True),
        sa.Column("trajectory_row_id", sa.Text(), primary_key=True),
        sa.Column("trajectory_id", sa.Text(), nullable=False),
        sa.Column("agent_id", sa.Text(), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        schema=OUR_SCHEMA,
    )


def downgrade() -> None:
    op.drop_table("excluded_trajectories", schema=OUR_SCHEMA)
