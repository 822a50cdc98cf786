"""The gateway's caller keys, stored hashed: which agents each may speak for, and what else it may set.

Revision ID: 0010_gateway_keys
Revises: 0009_judge_claims
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from babylon_assets.db.schema import OUR_SCHEMA

revision = "0010_gateway_keys"
down_revision = "0009_judge_claims"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gateway_keys",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("agents_json", sa.Text(), nullable=True),
        sa.Column("may_set_clock", sa.Boolean(), nullable=False),
        sa.Column("may_mark_evaluation", sa.Boolean(), nullable=False),
        sa.Column("label", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        schema=OUR_SCHEMA,
    )


def downgrade() -> None:
    op.drop_table("gateway_keys", schema=OUR_SCHEMA)
