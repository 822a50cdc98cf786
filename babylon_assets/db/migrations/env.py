"""Alembic environment: runs on the connection the store hands over (see `babylon_assets.db.migrate`)."""

from __future__ import annotations

from alembic import context

from babylon_assets.db.schema import OurBase

connection = context.config.attributes["connection"]
version_table_schema = context.config.attributes["version_table_schema"]

context.configure(
    connection=connection,
    target_metadata=OurBase.metadata,
    version_table="babylon_alembic_version",
    version_table_schema=version_table_schema,
    include_schemas=True,
    render_as_batch=connection.dialect.name == "sqlite",
)

with context.begin_transaction():
    context.run_migrations()
