"""The store: the game's schema as SQLAlchemy models, our schema, migrations, reads and writes."""
