"""Six of the game's own agents play through the gateway on a game-shaped PostgreSQL database: their calls
become a ready window, grouped and judged like simulator play, with P&L from the game's own books."""

import json
import time
from datetime import UTC, datetime, timedelta

import psycopg2
import pytest
from dagster import DagsterInstance
from starlette.testclient import TestClient

from babylon_assets.db.play_records import PlayRecords
from babylon_assets.db.store import Store
from babylon_assets.db.window_records import WindowRecords
from babylon_assets.definitions import build_definitions
from babylon_assets.gateway.app import AGENT_HEADER, Upstream, create_app
from babylon_assets.gateway.recording import GatewayRecorder
from babylon_assets.gateway.serving import ServingFile, write_serving_file
from babylon_assets.orchestration.pipeline import materialize_windows
from babylon_assets.settings import Settings
from tests.db.test_game_database import PRISMA_DDL
from tests.doubles.openai_compatible import OpenAICompatibleTestDouble
from tests.gateway.keys import AUTH, TEST_KEYS
from tests.gateway.test_gateway import body, wait_until

pytestmark = pytest.mark.postgres
HOUR = datetime(2025, 1, 15, 10, tzinfo=UTC)
AGENTS = [f"game-agent-{n}" for n in range(1, 7)]


def game_database(url: str) -> None:
    with psycopg2.connect(url) as connection, connection.cursor() as cursor:
        cursor.execute(PRISMA_DDL)
        for n, agent in enumerate(AGENTS):
            cursor.execute(
                'INSERT INTO "User" ("id", "isAgent", "virtualBalance", "lifetimePnL", "updatedAt") '
                "VALUES (%s, true, 10000, %s, now())",
                (agent, 100 * n),
            )
        cursor.execute(
            'INSERT INTO "market_outcomes" ("id", "windowId", "stockTicker", "startPrice", "endPrice", '
            '"changePercent", "sentiment") VALUES (%s, %s, %s, 100, 110, 10, %s)',
            ("mo-1", "2025-01-15T10:00", "NVDX", "bullish"),
        )


def settle(url: str, agent: str, pnl_change: float) -> None:
    """The game books a trade: its lifetime P&L and balance move."""
    with psycopg2.connect(url) as connection, connection.cursor() as cursor:
        cursor.execute(
            'UPDATE "User" SET "lifetimePnL" = "lifetimePnL" + %s, '
            '"virtualBalance" = "virtualBalance" + %s WHERE "id" = %s',
            (pnl_change, pnl_change, agent),
        )


def test_six_game_agents_through_the_gateway_become_a_judged_window(fresh_pg_url, tmp_path):
    game_database(fresh_pg_url)
    store = Store(fresh_pg_url, clock=lambda: HOUR + timedelta(hours=3))
    store.upgrade()
    ticks = iter(range(1000))
    serving = tmp_path / "serving.json"
    with OpenAICompatibleTestDouble(['{"action": "HOLD"}']) as double:
        write_serving_file(serving, Upstream("openai/deployed", double.base_url, version="babylon-mmo@2"))
        recorder = GatewayRecorder(store, backoff_s=0.05)
        app = create_app(
            ServingFile(serving, Upstream("openai/unused")),
            recorder,
            lambda: HOUR + timedelta(seconds=10 * next(ticks)),
            keys=TEST_KEYS,
        )
        with TestClient(app, headers=AUTH) as client:
            for minute in range(5):
                for agent in AGENTS:
                    response = client.post(
                        "/v1/chat/completions", json=body(agent, minute), headers={AGENT_HEADER: agent}
                    )
                    assert response.status_code == 200
                # The opening snapshot is taken as the hour's first call is recorded (milliseconds after it);
                # the game books the minute's trades after that.
                wait_until(lambda m=minute: recorder.counters.recorded == 6 * (m + 1))
                for n, agent in enumerate(AGENTS):
                    settle(fresh_pg_url, agent, (n - 2) * 10.0)
            unknown = client.post("/v1/chat/completions", json=body("stranger", 0), headers={AGENT_HEADER: "stranger"})
            assert unknown.status_code == 200  # the agent is answered; the record is refused by the game's rule
            wait_until(lambda: recorder.counters.recorded == 30 and recorder.counters.rejected == 1)
    assert PlayRecords(store).close_gateway_windows("2025-01-15T11:00") == 6
    read = store.read_window(
        "2025-01-15T10:00",
        __import__("babylon_assets.core.eligibility", fromlist=["EligibilityRules"]).EligibilityRules(),
    )
    pnl = {aw.agent_id: aw.final_pnl for aw in read.eligible}
    # P&L from the game's books: lifetimePnL at the hour's close minus at its first call (the first booking
    # happened after the first call)
    assert pnl == {agent: (n - 2) * 10.0 * 5 for n, agent in enumerate(AGENTS)}
    defs = build_definitions(Settings(DATABASE_URL=fresh_pg_url))
    with DagsterInstance.ephemeral() as instance:
        (run,) = materialize_windows(defs, ["2025-01-15T10:00"], instance)
        assert run.success
    members = WindowRecords(store).group_members("2025-01-15T10:00")
    assert len(members) == 6 and all(m.score is not None for m in members)
    with psycopg2.connect(fresh_pg_url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM reward_judgments")
        assert cursor.fetchone() == (6,)
        cursor.execute("SELECT metadata FROM llm_call_logs LIMIT 1")
        assert json.loads(cursor.fetchone()[0])["modelVersion"] == "babylon-mmo@2"
    store.dispose()


def test_the_serving_file_is_reread_when_a_deploy_changes_it(tmp_path):
    path = tmp_path / "serving.json"
    serving = ServingFile(path, Upstream("openai/fallback"))
    assert serving().model == "openai/fallback"
    write_serving_file(path, Upstream("openai/base", "http://127.0.0.1:1/v1", version="base@0"))
    assert serving().version == "base@0"
    time.sleep(0.01)
    write_serving_file(path, Upstream("openai/ckpt", "http://127.0.0.1:1/v1", version="babylon-mmo@4"))
    assert serving().version == "babylon-mmo@4"
    path.write_text("{ broken")
    assert serving().version == "babylon-mmo@4"  # a broken file keeps the last good upstream
