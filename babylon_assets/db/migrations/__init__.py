"""Alembic migrations of the store (our schema, and the game's tables only in a store of our own)."""
