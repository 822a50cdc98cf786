"""Claims on groups being judged: two runs scoring one window at once pay the judge for each group once.

Revision ID: 0009_judge_claims
Revises: 0008_store_identity
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from babylon_assets.db.schema import OUR_SCHEMA

revision = "0009_judge_claims"
down_revision = "0008_store_identity"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "judge_claims",
        sa.Column("cache_key", sa.String(64), primary_key=True),
        sa.Column("owner", sa.Text(), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        schema=OUR_SCHEMA,
    )


def downgrade() -> None:
    op.drop_table("judge_claims", schema=OUR_SCHEMA)
