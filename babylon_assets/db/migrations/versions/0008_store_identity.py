"""The store's own identity: checkpoint folders name the store whose runs made them, so lineage cannot mix.

Revision ID: 0008_store_identity
Revises: 0007_excluded_trajectories
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from babylon_assets.db.schema import OUR_SCHEMA

revision = "0008_store_identity"
down_revision = "0007_excluded_trajectories"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "store_identity",
        sa.Column("store_id", sa.String(64), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        schema=OUR_SCHEMA,
    )


def downgrade() -> None:
    op.drop_table("store_identity", schema=OUR_SCHEMA)
