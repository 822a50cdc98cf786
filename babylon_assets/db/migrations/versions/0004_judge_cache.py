"""The judge cache: one row per judged group, keyed by a hash of (judge view, judge model, rubric version).

Revision ID: 0004_judge_cache
Revises: 0003_window_graph
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from babylon_assets.db.schema import OUR_SCHEMA

revision = "0004_judge_cache"
down_revision = "0003_window_graph"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "judge_cache",
        sa.Column("cache_key", sa.String(64), primary_key=True),
        sa.Column("judge_version", sa.String(200), nullable=False),
        sa.Column("window_id", sa.String(50), nullable=False),
        sa.Column("group_id", sa.String(80), nullable=False),
        sa.Column("scores_json", sa.Text(), nullable=False),
        sa.Column("tokens_in", sa.Integer(), nullable=False),
        sa.Column("tokens_out", sa.Integer(), nullable=False),
        sa.Column("dollars", sa.Double(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        schema=OUR_SCHEMA,
    )


def downgrade() -> None:
    op.drop_table("judge_cache", schema=OUR_SCHEMA)
