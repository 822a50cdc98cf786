"""Evaluation play: each held-out agent-window a policy played, stored as it finishes.

Revision ID: 0006_evaluation_plays
Revises: 0005_training_lineage
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from babylon_assets.db.schema import OUR_SCHEMA

revision = "0006_evaluation_plays"
down_revision = "0005_training_lineage"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "evaluation_plays",
        sa.Column("plan_key", sa.String(64), primary_key=True),
        sa.Column("policy", sa.String(300), primary_key=True),
        sa.Column("seed", sa.Integer(), primary_key=True),
        sa.Column("window_id", sa.String(50), primary_key=True),
        sa.Column("slot", sa.String(80), primary_key=True),
        sa.Column("final_pnl", sa.Double(), nullable=False),
        sa.Column("decisions", sa.Integer(), nullable=False),
        sa.Column("unparseable", sa.Integer(), nullable=False),
        sa.Column("max_drawdown", sa.Double(), nullable=False),
        sa.Column("trajectory_id", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        schema=OUR_SCHEMA,
    )


def downgrade() -> None:
    op.drop_table("evaluation_plays", schema=OUR_SCHEMA)
