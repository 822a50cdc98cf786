"""Tables of the window graph: window states, group membership with scores, judgment history,
per-window check verdicts, and training datasets with their members.

Revision ID: 0003_window_graph
Revises: 0002_quarantine
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from babylon_assets.db.schema import OUR_SCHEMA

revision = "0003_window_graph"
down_revision = "0002_quarantine"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "window_states",
        sa.Column("window_id", sa.String(50), primary_key=True),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("agents", sa.Integer(), nullable=False),
        sa.Column("eligible", sa.Integer(), nullable=False),
        sa.Column("excluded_json", sa.Text(), nullable=False),
        sa.Column("quarantined_json", sa.Text(), nullable=False),
        sa.Column("ready", sa.Boolean(), nullable=False),
        sa.Column("rows_fingerprint", sa.String(64), nullable=False),
        sa.Column("updated_at", _WHEN, nullable=False),
        schema=OUR_SCHEMA,
    )
    op.create_table(
        "group_members",
        sa.Column("window_id", sa.String(50), primary_key=True),
        sa.Column("agent_window_id", sa.Text(), primary_key=True),
        sa.Column("agent_id", sa.Text(), nullable=False),
        sa.Column("trajectory_ids_json", sa.Text(), nullable=False),
        sa.Column("kept", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("group_id", sa.String(80), nullable=True),
        sa.Column("dropout_rate", sa.Double(), nullable=False),
        sa.Column("dropout_draw", sa.Double(), nullable=False),
        sa.Column("final_pnl", sa.Double(), nullable=True),
        sa.Column("score", sa.Double(), nullable=True),
        sa.Column("rank", sa.Integer(), nullable=True),
        sa.Column("reasoning", sa.Text(), nullable=True),
        sa.Column("judge_name", sa.String(64), nullable=True),
        sa.Column("judge_version", sa.String(200), nullable=True),
        sa.Column("judged_at", _WHEN, nullable=True),
        schema=OUR_SCHEMA,
    )
    op.create_index("group_members_group_idx", "group_members", ["group_id"], schema=OUR_SCHEMA)
    op.create_table(
        "judgment_history",
        sa.Column("id", _ID, primary_key=True),
        sa.Column("window_id", sa.String(50), nullable=False),
        sa.Column("agent_window_id", sa.Text(), nullable=False),
        sa.Column("group_id", sa.String(80), nullable=False),
        sa.Column("judge_name", sa.String(64), nullable=False),
        sa.Column("judge_version", sa.String(200), nullable=False),
        sa.Column("score", sa.Double(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=True),
        sa.Column("reasoning", sa.Text(), nullable=False),
        sa.Column("judged_at", _WHEN, nullable=False),
        sa.Column("times_judged", sa.Integer(), server_default=sa.text("1"), nullable=False),
        schema=OUR_SCHEMA,
    )
    op.create_index(
        "judgment_history_key",
        "judgment_history",
        ["agent_window_id", "judge_version", "window_id"],
        unique=True,
        schema=OUR_SCHEMA,
    )
    op.create_table(
        "window_verdicts",
        sa.Column("window_id", sa.String(50), primary_key=True),
        sa.Column("check_name", sa.String(64), primary_key=True),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.Column("checked_at", _WHEN, nullable=False),
        schema=OUR_SCHEMA,
    )
    op.create_index("window_verdicts_run_idx", "window_verdicts", ["run_id"], schema=OUR_SCHEMA)
    op.create_table(
        "training_datasets",
        sa.Column("dataset_id", sa.String(64), primary_key=True),
        sa.Column("created_at", _WHEN, nullable=False),
        sa.Column("until_window", sa.String(50), nullable=False),
        sa.Column("lookback_hours", sa.Integer(), nullable=False),
        sa.Column("windows", sa.Integer(), nullable=False),
        sa.Column("groups", sa.Integer(), nullable=False),
        sa.Column("trajectories", sa.Integer(), nullable=False),
        sa.Column("dropped_json", sa.Text(), nullable=False),
        schema=OUR_SCHEMA,
    )
    op.create_table(
        "dataset_members",
        sa.Column("dataset_id", sa.String(64), primary_key=True),
        sa.Column("agent_window_id", sa.Text(), primary_key=True),
        sa.Column("window_id", sa.String(50), nullable=False),
        sa.Column("group_id", sa.String(80), nullable=False),
        sa.Column("reward", sa.Double(), nullable=False),
        schema=OUR_SCHEMA,
    )


def downgrade() -> None:
    for table in (
        "dataset_members",
        "training_datasets",
        "window_verdicts",
        "judgment_history",
        "group_members",
        "window_states",
    ):
        op.drop_table(table, schema=OUR_SCHEMA)
