"""Shared fixtures: an isolated environment per test, and real PostgreSQL databases made per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg2
import pytest

from babylon_assets.db.store import Store
from babylon_assets.settings import Settings

PG_ADMIN_DSN = os.environ.get("BABYLON_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() == "true"
# The tests' fixed "now": every window they write is closed and inside the default lookback.
NOW = datetime(2025, 1, 15, 14, 30, tzinfo=UTC)


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """No developer setting leaks in: each test starts from the defaults and its own SQLite file."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)
    for name in ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USERNAME", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'store.db'}")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.setenv("PYTHON_DOTENV_DISABLED", "1")
    # The batching event log turns Dagster's event batching on for the process it runs in (setdefault):
    # unset here, with the unset state recorded, so a test that builds one leaves no batching behind.
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "")
    monkeypatch.delenv("DAGSTER_EVENT_BATCH_SIZE")


def _admin_connection():
    connection = psycopg2.connect(PG_ADMIN_DSN, connect_timeout=3)
    connection.autocommit = True
    return connection


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The PostgreSQL server's admin DSN; skips off CI when it is unreachable, fails on CI."""
    try:
        _admin_connection().close()
    except psycopg2.OperationalError as error:
        message = (
            f"PostgreSQL is not reachable at {PG_ADMIN_DSN} ({str(error).strip()}); start it "
            "(e.g. `pg_ctlcluster 15 main start`) or set BABYLON_TEST_PG_URL"
        )
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return PG_ADMIN_DSN


@pytest.fixture
def fresh_pg_url(postgres_server: str) -> Iterator[str]:
    """A new empty database; yields its URL as the game's .env writes it (no driver named)."""
    name = f"babylon_test_{uuid.uuid4().hex[:12]}"
    admin = _admin_connection()
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    dsn = psycopg2.extensions.parse_dsn(postgres_server)
    user = dsn.get("user", "postgres")
    host = dsn.get("host", "127.0.0.1")
    port = dsn.get("port", "5432")
    try:
        yield f"postgresql://{user}@{host}:{port}/{name}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """The same test on the embedded SQLite store and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'param-store.db'}"
    return request.getfixturevalue("fresh_pg_url")


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    """A migrated store of our own at `database_url`, clocked at NOW."""
    opened = Store(database_url, clock=lambda: NOW)
    opened.upgrade()
    try:
        yield opened
    finally:
        opened.dispose()


SIM_START = datetime(2025, 1, 15, 10, tzinfo=UTC)


@pytest.fixture
def simulated_store(tmp_path) -> Iterator[Store]:
    """An embedded store with 3 simulated windows of 6 agents from 2025-01-15T10:00 (seed 7), clocked at NOW."""
    from babylon_assets.play.simulator import SimulationPlan, simulate

    opened = Store(f"sqlite:///{tmp_path / 'simulated.db'}", clock=lambda: NOW)
    opened.upgrade()
    simulate(opened, SimulationPlan(agents=6, windows=3, duration_minutes=8, seed=7, start=SIM_START), now=NOW)
    try:
        yield opened
    finally:
        opened.dispose()


@pytest.fixture
def postgres_instance_env(monkeypatch: pytest.MonkeyPatch, fresh_pg_url: str) -> str:
    """DAGSTER_PG_* set to a fresh database, as a user sets them to choose dagster.postgres.yaml."""
    user_host, database = fresh_pg_url.removeprefix("postgresql://").rsplit("/", 1)
    user, host_port = user_host.split("@")
    host, port = host_port.split(":")
    for name, value in (
        ("DAGSTER_PG_HOST", host),
        ("DAGSTER_PG_PORT", port),
        ("DAGSTER_PG_USERNAME", user),
        ("DAGSTER_PG_PASSWORD", ""),
        ("DAGSTER_PG_DB", database),
    ):
        monkeypatch.setenv(name, value)
    return fresh_pg_url


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """DESIGN 6's tiny model: a random 2-layer Llama folder with SmolLM2's tokenizer and chat template."""
    from babylon_assets.training.base_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def llama_server() -> None:
    """llama-server is built and SmolLM2's GGUF (its tokenizer) installed; skips off CI when not, fails on CI."""
    from babylon_assets.llm import local_server

    missing = []
    if not local_server.server_binary().is_file():
        missing.append(f"llama-server is not built ({local_server.server_binary()})")
    try:
        local_server.model_file()
    except local_server.LocalLlmError as error:
        missing.append(str(error))
    if missing:
        message = "; ".join(missing) + ": run `make llm-build` to run the local LLM tests"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
