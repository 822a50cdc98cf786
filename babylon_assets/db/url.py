"""`DATABASE_URL` as the game's `.env` writes it, turned into what SQLAlchemy needs (DESIGN 2)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL, make_url

# psycopg2 is the driver we install (dagster-postgres needs it too); SQLAlchemy 2.1 would map a bare
# postgresql:// to psycopg 3, which is not installed.
POSTGRES_DRIVER = "postgresql+psycopg2"

# Query parameters that Prisma understands and libpq does not.
_PRISMA_ONLY_PARAMS = frozenset(
    {"schema", "connection_limit", "pool_timeout", "pgbouncer", "socket_timeout", "statement_cache_size"}
)


@dataclass(frozen=True, slots=True)
class DatabaseTarget:
    """Where the store lives: the SQLAlchemy URL and the schema holding the game's tables."""

    url: URL
    game_schema: str | None

    @property
    def is_sqlite(self) -> bool:
        """True for the embedded store."""
        return self.url.get_backend_name() == "sqlite"

    def redacted(self) -> str:
        """The URL with any password hidden, for messages."""
        return self.url.render_as_string(hide_password=True)


def resolve_database_url(raw: str) -> DatabaseTarget:
    """Accept `postgresql://...[?schema=x]` (Prisma's form) or `sqlite:///path`; name the driver."""
    url = make_url(raw.strip())
    backend = url.get_backend_name()
    if backend in ("postgresql", "postgres"):
        query = dict(url.query)
        schema = query.pop("schema", None)
        if isinstance(schema, tuple):
            schema = schema[-1]
        for name in _PRISMA_ONLY_PARAMS & set(query):
            query.pop(name)
        url = url.set(drivername=POSTGRES_DRIVER, query=query)
        return DatabaseTarget(url=url, game_schema=None if schema in (None, "", "public") else schema)
    if backend == "sqlite":
        database = url.database
        if database and database != ":memory:" and not database.startswith("file:"):
            path = Path(database).expanduser().resolve()
            path.parent.mkdir(parents=True, exist_ok=True)
            url = url.set(database=str(path))
        return DatabaseTarget(url=url, game_schema=None)
    raise ValueError(
        f"DATABASE_URL {url.render_as_string(hide_password=True)!r} is neither PostgreSQL nor SQLite; "
        "use postgresql://user@host:5432/db or sqlite:///path/to/file.db"
    )
