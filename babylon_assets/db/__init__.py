"""The store: the game's schema and ours (SQLAlchemy, Alembic), split by concern, one clock; may import core/ only."""
