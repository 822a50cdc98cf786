"""Gateway calls the store refused for their content (a NUL character, say), kept whole with the reason.

Revision ID: 0011_quarantined_gateway_calls
Revises: 0010_gateway_keys
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from babylon_assets.db.schema import OUR_SCHEMA

revision = "0011_quarantined_gateway_calls"
down_revision = "0010_gateway_keys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "quarantined_gateway_calls",
        sa.Column("call_id", sa.String(64), primary_key=True),
        sa.Column("agent_id", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("record_json", sa.Text(), nullable=False),
        sa.Column("quarantined_at", sa.DateTime(timezone=True), nullable=False),
        schema=OUR_SCHEMA,
    )


def downgrade() -> None:
    op.drop_table("quarantined_gateway_calls", schema=OUR_SCHEMA)
