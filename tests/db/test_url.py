from pathlib import Path

import pytest

from babylon_assets.db.url import resolve_database_url


def test_the_games_url_gets_a_driver_and_loses_prisma_parameters():
    target = resolve_database_url("postgresql://u:secret@db:5432/babylon?schema=public&connection_limit=5")
    assert target.url.drivername == "postgresql+psycopg2"
    assert dict(target.url.query) == {}
    assert target.game_schema is None
    assert "secret" not in target.redacted()


def test_a_named_schema_and_libpq_parameters_are_kept():
    target = resolve_database_url("postgres://u@db/babylon?schema=game&sslmode=require")
    assert target.game_schema == "game"
    assert dict(target.url.query) == {"sslmode": "require"}


def test_a_relative_sqlite_path_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = resolve_database_url("sqlite:///.babylon/x.db")
    assert target.is_sqlite and Path(target.url.database) == tmp_path / ".babylon" / "x.db"
    assert (tmp_path / ".babylon").is_dir()


def test_other_databases_are_refused_clearly():
    with pytest.raises(ValueError, match="neither PostgreSQL nor SQLite"):
        resolve_database_url("mysql://root@localhost/test")
