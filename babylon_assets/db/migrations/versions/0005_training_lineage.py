"""Training lineage: which agent-windows each training step learned from.

Revision ID: 0005_training_lineage
Revises: 0004_judge_cache
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from babylon_assets.db.schema import OUR_SCHEMA

revision = "0005_training_lineage"
down_revision = "0004_judge_cache"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "training_step_members",
        sa.Column("model_name", sa.String(200), primary_key=True),
        sa.Column("step", sa.Integer(), primary_key=True),
        sa.Column("agent_window_id", sa.Text(), primary_key=True),
        sa.Column("batch_id", sa.String(80), nullable=False),
        sa.Column("window_id", sa.String(50), nullable=False),
        sa.Column("group_id", sa.String(80), nullable=False),
        sa.Column("trajectory_ids", sa.Text(), nullable=False),
        sa.Column("reward", sa.Double(), nullable=False),
        schema=OUR_SCHEMA,
    )
    op.create_index("training_step_members_batch", "training_step_members", ["batch_id"], schema=OUR_SCHEMA)


def downgrade() -> None:
    op.drop_index("training_step_members_batch", table_name="training_step_members", schema=OUR_SCHEMA)
    op.drop_table("training_step_members", schema=OUR_SCHEMA)
