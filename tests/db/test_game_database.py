"""A real game database: the game's tables made the way Prisma makes them, read through DATABASE_URL."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import psycopg2
import pytest
from typer.testing import CliRunner

from babylon_assets.cli import app
from babylon_assets.core.eligibility import EligibilityRules
from babylon_assets.core.window_time import parse_window_id
from babylon_assets.db.play_records import PlayRecords, RecordedPlay
from babylon_assets.db.recorder import TrajectoryRecorder
from babylon_assets.db.schema import GAME_TABLE_NAMES, OUR_SCHEMA, OurBase
from babylon_assets.db.store import (
    GameReadOnlyError,
    NotOurStoreError,
    Store,
    UnknownAgentError,
)
from babylon_assets.play.simulator import SimulationPlan, simulate
from babylon_assets.settings import get_settings
from tests.builders import game_row
from tests.conftest import NOW

pytestmark = pytest.mark.postgres

PRISMA_DDL = (Path(__file__).parent.parent / "fixtures" / "prisma_game_schema.sql").read_text()
W = "2025-01-15T10:00"
W_START = parse_window_id(W)
AGENTS = [f"agent-{n}" for n in range(1, 6)]


def dsn(url: str) -> str:
    return url.split("?")[0]


def build_game_database(url: str, schema: str = "public") -> None:
    """Create the game's schema with Prisma's DDL and fill it with five agents' play, as the game would."""
    with psycopg2.connect(dsn(url)) as connection, connection.cursor() as cursor:
        if schema != "public":
            cursor.execute(f'CREATE SCHEMA "{schema}"')
        cursor.execute(f'SET search_path TO "{schema}"')
        cursor.execute(PRISMA_DDL)
        for agent in AGENTS:
            cursor.execute(
                'INSERT INTO "User" ("id", "username", "isAgent", "updatedAt") VALUES (%s, %s, true, now())',
                (agent, agent),
            )
        for n, agent in enumerate(AGENTS):
            row = game_row(f"game-{agent}", agent, W_START + timedelta(minutes=n))
            # Prisma writes every column it knows; the defaults fill the rest.
            columns = ", ".join(f'"{name}"' for name in row)
            cursor.execute(
                f'INSERT INTO "trajectories" ({columns}) VALUES ({", ".join(["%s"] * len(row))})',
                list(row.values()),
            )
        cursor.execute(
            'INSERT INTO "market_outcomes" ("id", "windowId", "stockTicker", "startPrice", "endPrice", '
            '"changePercent", "sentiment", "newsEvents") VALUES '
            "('mo-1', %s, 'NVDX', 100.00, 84.50, -15.50, 'bearish', %s::jsonb)",
            (W, json.dumps([{"headline": "NVDX recalls its chips"}])),
        )
        cursor.execute(
            'INSERT INTO "market_outcomes" ("id", "windowId", "predictionMarketId", "question", "outcome", '
            '"finalProbability", "volume") VALUES '
            "('mo-2', %s, 'pm-9', 'Will NVDX fall 10%%?', 'YES', 0.9700, 25000.00)",
            (W,),
        )


def snapshot(url: str, schema: str) -> dict:
    """Everything Prisma would compare: columns, indexes and constraints of the game's schema."""
    with psycopg2.connect(dsn(url)) as connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT table_name, column_name, data_type, is_nullable, column_default, "
            "character_maximum_length, numeric_precision, numeric_scale, datetime_precision "
            "FROM information_schema.columns WHERE table_schema = %s ORDER BY 1, 2",
            (schema,),
        )
        columns = cursor.fetchall()
        cursor.execute(
            "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = %s ORDER BY 1, 2", (schema,)
        )
        indexes = cursor.fetchall()
        cursor.execute(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE connamespace = %s::regnamespace ORDER BY 1, 2",
            (schema,),
        )
        constraints = cursor.fetchall()
        cursor.execute(
            "SELECT count(*) FROM trajectories"
            if schema == "public"
            else f'SELECT count(*) FROM "{schema}".trajectories'
        )
        return {"columns": columns, "indexes": indexes, "constraints": constraints, "rows": cursor.fetchone()}


@pytest.mark.parametrize("schema", ["public", "game"])
def test_a_prisma_game_database_is_read_through_its_url_unchanged(fresh_pg_url, monkeypatch, schema):
    build_game_database(fresh_pg_url, schema)
    before = snapshot(fresh_pg_url, schema)
    url = fresh_pg_url if schema == "public" else f"{fresh_pg_url}?schema={schema}"
    monkeypatch.setenv("DATABASE_URL", url)
    store = Store.from_settings(get_settings(), clock=lambda: NOW)
    try:
        store.upgrade()
        store.upgrade()
        assert store.is_game_database
        read = store.read_window(W, EligibilityRules(min_actions=5, min_agents=5))
        assert sorted(aw.agent_id for aw in read.eligible) == AGENTS
        assert read.quarantined == [] and read.excluded == []
        outcomes = store.window_outcomes(W)
        assert outcomes.stocks[0].change_percent == -15.5
        assert outcomes.stocks[0].news == [{"headline": "NVDX recalls its chips"}]
        assert outcomes.predictions[0].outcome == "YES"
        summaries = store.window_summaries(EligibilityRules(5, 5, 1), lookback_hours=24)
        assert [(s.window_id, s.eligible_agents, s.outcomes_recorded) for s in summaries] == [(W, 5, True)]
    finally:
        store.dispose()
    assert snapshot(fresh_pg_url, schema) == before, "the game's tables must never be migrated"
    with psycopg2.connect(dsn(fresh_pg_url)) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (OUR_SCHEMA,))
        ours = {name for (name,) in cursor.fetchall()}
    assert ours == {table.name for table in OurBase.metadata.tables.values()} | {"babylon_alembic_version"}
    assert not (ours & GAME_TABLE_NAMES)


def test_our_game_tables_are_the_same_as_prismas(fresh_pg_url, postgres_server):
    """The embedded/simulator store's game tables match the Prisma DDL column for column."""
    build_game_database(fresh_pg_url)
    prisma = snapshot(fresh_pg_url, "public")
    ours_url = fresh_pg_url.rsplit("/", 1)[0] + "/" + dsn(fresh_pg_url).rsplit("/", 1)[1] + "_ours"
    admin = psycopg2.connect(postgres_server)
    admin.autocommit = True
    name = ours_url.rsplit("/", 1)[1]
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        store = Store(ours_url)
        store.upgrade()
        store.dispose()
        with psycopg2.connect(ours_url) as connection, connection.cursor() as cursor:
            cursor.execute('CREATE TABLE "User" ("id" TEXT PRIMARY KEY)')  # only so the snapshot lines up
        ours = snapshot(ours_url, "public")

        def game_only(rows):
            return [r for r in rows if r[0].strip('"') in GAME_TABLE_NAMES]

        assert game_only(ours["columns"]) == game_only(prisma["columns"])
        assert game_only(ours["indexes"]) == game_only(prisma["indexes"])
        prisma_constraints = [c for c in game_only(prisma["constraints"]) if "agentId_fkey" not in c[1]]
        assert game_only(ours["constraints"]) == prisma_constraints
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_writes_into_a_game_database_follow_the_rules(fresh_pg_url):
    build_game_database(fresh_pg_url)
    store = Store(fresh_pg_url, clock=lambda: NOW)
    store.upgrade()
    try:
        with pytest.raises(NotOurStoreError, match="game database"):
            simulate(store, SimulationPlan(windows=1), now=NOW)
        with pytest.raises(NotOurStoreError):
            PlayRecords(store).replace_market_outcomes(W, [])
        with pytest.raises(UnknownAgentError, match="stranger"):
            PlayRecords(store).record_play(RecordedPlay(trajectories=[game_row("x", "stranger", W_START)]))
        recorder = TrajectoryRecorder(store, clock=lambda: NOW)
        recorder.start("agent-1", trajectory_id="recorded-by-us", start_time=W_START)
        recorder.end("recorded-by-us", final_pnl=0.0, end_time=W_START + timedelta(minutes=1))
        assert store.existing_trajectory_ids(["recorded-by-us", "x"]) == {"recorded-by-us"}
        assert store.read_window(W, EligibilityRules(min_actions=5, min_agents=5)).rows == 6
    finally:
        store.dispose()
    read_only = Store(fresh_pg_url, game_read_only=True, clock=lambda: NOW)
    try:
        with pytest.raises(GameReadOnlyError):
            PlayRecords(read_only).record_play(RecordedPlay(trajectories=[game_row("y", "agent-1", W_START)]))
    finally:
        read_only.dispose()


def test_the_simulate_command_refuses_a_game_database_clearly(fresh_pg_url, monkeypatch):
    build_game_database(fresh_pg_url)
    monkeypatch.setenv("DATABASE_URL", fresh_pg_url)
    result = CliRunner().invoke(app, ["simulate", "--windows", "1"])
    assert result.exit_code == 2
    assert "refusing to write simulated play" in result.output and "game database" in result.output


def test_a_game_database_missing_tables_is_refused_with_a_reason(fresh_pg_url):
    with psycopg2.connect(fresh_pg_url) as connection, connection.cursor() as cursor:
        cursor.execute('CREATE TABLE "User" ("id" TEXT PRIMARY KEY)')
    store = Store(fresh_pg_url)
    try:
        with pytest.raises(Exception, match="never creates tables in a game database"):
            store.upgrade()
    finally:
        store.dispose()


def test_check_windows_reads_the_game_database(fresh_pg_url, monkeypatch):
    build_game_database(fresh_pg_url)
    monkeypatch.setenv("DATABASE_URL", fresh_pg_url)
    runner = CliRunner()
    args = [
        "check-windows",
        "--min-agents",
        "5",
        "--min-actions",
        "5",
        "--lookback-hours",
        "24",
        "--until",
        "2025-01-15T14:00",
    ]
    ready = runner.invoke(app, [*args, "--min-ready-windows", "1"])
    assert ready.exit_code == 0, ready.output
    assert "READY FOR TRAINING" in ready.output and W in ready.output
    not_ready = runner.invoke(app, [*args, "--min-ready-windows", "3"])
    assert not_ready.exit_code == 1
    assert "NOT READY: 1 of 3 required ready windows" in not_ready.output
