"""Secrets appear nowhere (issue 19): DATABASE_URL's password, the judge's and agents' keys and the instance's own
database password reach Dagster only as EnvVar, so neither the instance's storage (snapshots decompressed) nor its
event log, nor the store, holds them after a real run."""

from __future__ import annotations

import contextlib
import sqlite3
import zlib
from pathlib import Path

import psycopg2
import pytest
from dagster import DagsterInstance, EnvVar

from babylon_assets.core.window_time import utcnow
from babylon_assets.db.store import Store
from babylon_assets.definitions import build_definitions, build_resources
from babylon_assets.orchestration.instance import prepare_dagster_home
from babylon_assets.orchestration.pipeline import materialize_windows
from babylon_assets.play.simulator import SimulationPlan, simulate
from babylon_assets.settings import Settings
from tests.orchestration.test_instance import ROOT

DATABASE_PASSWORD = "pw-9f3b1c7e0a"
SECRETS = {
    "JUDGE_API_KEY": "sk-judge-4d2a8e61",
    "AGENT_API_KEY": "sk-agent-77c01f3b",
    "WANDB_API_KEY": "wandb-5e8d2c90aa",
}


def _texts(value: object) -> list[str]:
    """A stored cell as text, and decompressed when it is zlib data (Dagster compresses its snapshots)."""
    if isinstance(value, memoryview):
        value = value.tobytes()
    if isinstance(value, bytes):
        texts = [value.decode("utf-8", "replace")]
        with contextlib.suppress(zlib.error):
            texts.append(zlib.decompress(value).decode("utf-8", "replace"))
        return texts
    if isinstance(value, str):
        texts = [value]
        with contextlib.suppress(ValueError, zlib.error):
            texts.append(zlib.decompress(bytes.fromhex(value)).decode("utf-8", "replace"))
        return texts
    return [str(value)]


def sqlite_texts(folder: Path) -> list[str]:
    texts = []
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        texts.extend(_texts(path.read_bytes()))
        if path.suffix == ".db":
            connection = sqlite3.connect(path)
            tables = [row[0] for row in connection.execute("select name from sqlite_master where type='table'")]
            for table in tables:
                for row in connection.execute(f'select * from "{table}"'):
                    for cell in row:
                        texts.extend(_texts(cell))
            connection.close()
    return texts


def postgres_texts(dsn: str) -> list[str]:
    texts = []
    connection = psycopg2.connect(dsn)
    with connection.cursor() as cursor:
        cursor.execute(
            "select table_schema, table_name from information_schema.tables "
            "where table_schema not in ('pg_catalog', 'information_schema') and table_type = 'BASE TABLE'"
        )
        for schema, table in cursor.fetchall():
            cursor.execute(f'select * from "{schema}"."{table}"')
            for row in cursor.fetchall():
                for cell in row:
                    texts.extend(_texts(cell))
    connection.close()
    return texts


def leaked(texts: list[str]) -> list[str]:
    everything = "\n".join(texts)
    return [name for name, secret in {**SECRETS, "password": DATABASE_PASSWORD}.items() if secret in everything]


def with_password(url: str) -> str:
    """The PostgreSQL URL with a password in it (trust auth on the test server ignores it)."""
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user}:{DATABASE_PASSWORD}@{host}"


def test_a_secret_in_the_environment_reaches_dagster_as_an_env_var(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://game:hunter2@db.example/game")
    monkeypatch.setenv("JUDGE_API_KEY", SECRETS["JUDGE_API_KEY"])
    resources = build_resources(Settings())
    assert isinstance(resources["store"].database_url, EnvVar)  # type: ignore[attr-defined]
    assert resources["store"].database_url.env_var_name == "DATABASE_URL"  # type: ignore[attr-defined]
    assert isinstance(resources["judge"].api_key, EnvVar)  # type: ignore[attr-defined]
    # a value given in code, not taken from the environment, stays as given
    assert build_resources(Settings(DATABASE_URL="sqlite:///x.db"))["store"].database_url == "sqlite:///x.db"  # type: ignore[attr-defined]


def run_window_graph(store_url: str, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DATABASE_URL", store_url)
    for name, secret in SECRETS.items():
        monkeypatch.setenv(name, secret)
    store = Store(store_url)
    store.upgrade()
    summary = simulate(store, SimulationPlan(agents=5, windows=2, duration_minutes=5, seed=3), now=utcnow())
    store.dispose()
    monkeypatch.chdir(ROOT)
    prepare_dagster_home(Settings(DAGSTER_HOME=str(tmp_path / "home")))
    defs = build_definitions(Settings())
    with DagsterInstance.get() as instance:
        runs = materialize_windows(defs, [w.window_id for w in summary.windows], instance)
        assert all(run.success for run in runs)


@pytest.mark.postgres
def test_no_secret_reaches_the_sqlite_instance_or_the_store(monkeypatch, tmp_path, fresh_pg_url):
    run_window_graph(with_password(fresh_pg_url), monkeypatch, tmp_path)
    assert leaked(sqlite_texts(tmp_path / "home")) == []
    assert leaked(postgres_texts(fresh_pg_url)) == []


@pytest.mark.postgres
def test_no_secret_reaches_the_postgres_instance(monkeypatch, tmp_path, postgres_instance_env, postgres_server):
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", DATABASE_PASSWORD)  # trust auth: accepted and never needed
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    run_window_graph(store_url, monkeypatch, tmp_path)
    assert leaked(postgres_texts(postgres_instance_env)) == []
    assert leaked(sqlite_texts(tmp_path / "home")) == []


def test_no_secret_reaches_the_wandb_files_of_a_run(monkeypatch, tmp_path):
    from babylon_assets.training.tracking import WandbTracker

    monkeypatch.setenv("DATABASE_URL", f"postgresql://game:{DATABASE_PASSWORD}@db.example/game")
    for name, secret in SECRETS.items():
        monkeypatch.setenv(name, secret)
    tracker = WandbTracker(project="babylon-agents", mode="offline", directory=str(tmp_path / "wandb"))
    tracker.start("batch-secrets", {"learning_rate": 1e-4, "base_model": "tiny"})
    tracker.summarize({"loss": 0.5})
    tracker.finish()
    files = [p for p in (tmp_path / "wandb").rglob("*") if p.is_file()]
    assert files, "W&B wrote nothing to scan"
    assert leaked([text for p in files for text in _texts(p.read_bytes())]) == []
