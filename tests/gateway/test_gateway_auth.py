"""Only authenticated callers get through the gateway, and only for the agents their key speaks for; bad requests
are refused before anything is forwarded (against a TEST DOUBLE upstream on 127.0.0.1)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient
from typer.testing import CliRunner

from babylon_assets.cli import app as cli
from babylon_assets.db.gateway_keys import GatewayKeyRecords
from babylon_assets.db.schema import GatewayKey, LlmCallLog, table_of
from babylon_assets.db.store import Store
from babylon_assets.gateway import auth
from babylon_assets.gateway.app import AGENT_HEADER, GatewayLimits, Upstream, create_app
from babylon_assets.gateway.auth import GatewayKeys
from babylon_assets.gateway.recording import GatewayRecorder
from tests.doubles.openai_compatible import OpenAICompatibleTestDouble
from tests.gateway.test_gateway import DECISION, body, count

HOUR = datetime(2025, 1, 15, 10, tzinfo=UTC)
LIMITS = GatewayLimits(max_body_bytes=20_000, rate_limit=0.0, upstream_timeout_s=10.0)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def store(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'auth.db'}")
    store.upgrade()
    yield store
    store.dispose()


def client_for(store: Store, double: OpenAICompatibleTestDouble, limits: GatewayLimits = LIMITS) -> TestClient:
    recorder = GatewayRecorder(store, backoff_s=0.05)
    upstream = Upstream("openai/deployed", double.base_url, version="babylon-mmo@3")
    return TestClient(create_app(lambda: upstream, recorder, lambda: HOUR, keys=GatewayKeys(store), limits=limits))


def test_no_key_a_wrong_key_or_another_agents_key_is_refused_and_nothing_forwarded_or_recorded(store, monkeypatch):
    monkeypatch.setattr(auth, "KEY_CACHE_SECONDS", 0.0)
    records = GatewayKeyRecords(store)
    _, agent_key = records.create(agents=["agent-1"], label="agent-1's own")
    key_id, server_key = records.create(agents=None, label="the game server")
    with OpenAICompatibleTestDouble([DECISION] * 10) as double, client_for(store, double) as client:
        post = lambda headers, agent="agent-1": client.post(  # noqa: E731
            "/v1/chat/completions", json=body(agent, 0), headers={AGENT_HEADER: agent, **headers}
        )
        assert post({}).status_code == 401
        assert post(bearer("bk-nothere-xyz")).status_code == 401
        assert post(bearer(agent_key + "x")).status_code == 401
        refused = post(bearer(agent_key), agent="agent-2")
        assert refused.status_code == 403 and "agent-2" in refused.json()["error"]["message"]
        assert double.requests == []
        assert post(bearer(agent_key)).status_code == 200
        assert post(bearer(server_key), agent="agent-9").status_code == 200  # the game server's key: any agent
        assert records.revoke(key_id)
        assert post(bearer(server_key), agent="agent-9").status_code == 401  # revoked: refused at once
        assert len(double.requests) == 2
    # the keys are stored hashed: neither secret is in the table
    with store.engine.connect() as connection:
        stored = " ".join(str(v) for row in connection.execute(select(table_of(GatewayKey))) for v in row)
    assert agent_key not in stored and server_key not in stored


def test_the_clock_and_held_out_play_need_a_key_allowed_to_set_them(store):
    records = GatewayKeyRecords(store)
    _, plain = records.create(agents=["agent-1"])
    _, simulator = records.create(agents=["agent-1"], may_set_clock=True, may_mark_evaluation=True)
    with OpenAICompatibleTestDouble([DECISION] * 4) as double, client_for(store, double) as client:
        for headers, state, status in (
            (bearer(plain), {"at": "2025-01-15T10:30:00+00:00"}, 403),
            (bearer(plain), {"evaluation": True}, 403),
            (bearer(simulator), {"at": "2025-01-15T10:30:00+00:00", "evaluation": True}, 200),
        ):
            payload = {**body("agent-1", 0), "babylon": state}
            answer = client.post("/v1/chat/completions", json=payload, headers={AGENT_HEADER: "agent-1", **headers})
            assert answer.status_code == status, answer.text
        assert len(double.requests) == 1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"messages": "hello"}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 7}]}, "messages[0].content"),
        ({"temperature": "hot"}, "temperature"),
        ({"max_tokens": 2.5}, "max_tokens"),
        ({"stream": "yes"}, "stream"),
        ({"babylon": {"at": "yesterday"}}, "babylon.at"),
        ({"babylon": []}, "babylon"),
        ({"babylon": {"at": 20250115}}, "babylon.at"),
        ({"babylon": {"openPositions": 1e400}}, "babylon.openPositions"),
        ({"babylon": {"balance": float("nan")}}, "babylon.balance"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": None}]}], "stream": 1}, "stream"),
    ],
)
def test_a_malformed_request_gets_a_400_naming_its_field_and_the_connection_stays(store, change, field):
    _, key = GatewayKeyRecords(store).create(agents=["agent-1"], may_set_clock=True)
    with OpenAICompatibleTestDouble([DECISION] * 2) as double, client_for(store, double) as client:
        headers = {AGENT_HEADER: "agent-1", **bearer(key)}
        # Sent as Python writes JSON, NaN and Infinity included, as a careless client would.
        raw = json.dumps({**body("agent-1", 0), **change})
        bad = client.post("/v1/chat/completions", content=raw, headers={**headers, "Content-Type": "application/json"})
        assert bad.status_code == 400 and bad.json()["error"]["message"].startswith(field)
        assert client.post("/v1/chat/completions", json=body("agent-1", 1), headers=headers).status_code == 200
        assert len(double.requests) == 1
    assert count(store, LlmCallLog) <= 1


def test_a_body_over_the_limit_is_refused_unread_and_a_key_over_its_rate_gets_429(store):
    _, key = GatewayKeyRecords(store).create(agents=["agent-1"])
    headers = {AGENT_HEADER: "agent-1", **bearer(key)}
    with OpenAICompatibleTestDouble([DECISION] * 5) as double:
        with client_for(store, double) as client:
            huge = {**body("agent-1", 0), "messages": [{"role": "user", "content": "x" * 50_000}]}
            answer = client.post("/v1/chat/completions", json=huge, headers=headers)
            assert answer.status_code == 413 and "GATEWAY_MAX_BODY_BYTES" in answer.json()["error"]["message"]
        limited = GatewayLimits(max_body_bytes=20_000, rate_limit=1.0, upstream_timeout_s=10.0)
        with client_for(store, double, limited) as client:
            statuses = [
                client.post("/v1/chat/completions", json=body("agent-1", n), headers=headers).status_code
                for n in range(3)
            ]
        assert statuses[0] == 200 and 429 in statuses
        assert len(double.requests) == statuses.count(200)


def test_keys_are_created_listed_and_revoked_from_the_cli(tmp_path, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    runner = CliRunner()
    refused = runner.invoke(cli, ["gateway", "keys", "create"])
    assert refused.exit_code == 2 and "--game-server" in refused.output
    created = runner.invoke(cli, ["gateway", "keys", "create", "--agent", "agent-1", "--clock", "--label", "sim"])
    assert created.exit_code == 0, created.output
    token = created.output.strip().splitlines()[-1]
    assert token.startswith("bk-")
    key_id = token.split("-")[1]
    listed = runner.invoke(cli, ["gateway", "keys", "list"])
    assert key_id in listed.output and "agent-1" in listed.output and token not in listed.output
    assert runner.invoke(cli, ["gateway", "keys", "revoke", key_id]).exit_code == 0
    assert runner.invoke(cli, ["gateway", "keys", "revoke", key_id]).exit_code == 2


def test_the_translated_path_forwards_only_openai_options(store):
    """litellm takes `base_url` and `mock_response` too: a caller must not redirect the upstream's key or put words
    in the model's mouth."""
    _, key = GatewayKeyRecords(store).create(agents=["agent-1"])
    with OpenAICompatibleTestDouble([DECISION]) as double:
        recorder = GatewayRecorder(store, backoff_s=0.05)
        upstream = Upstream("hosted_vllm/deployed", double.base_url, version="v@1")  # not passed through: litellm
        app = create_app(lambda: upstream, recorder, lambda: HOUR, keys=GatewayKeys(store), limits=LIMITS)
        with TestClient(app) as client:
            payload = {**body("agent-1", 0), "base_url": "http://127.0.0.1:9/v1", "mock_response": "I was told to say"}
            answer = client.post("/v1/chat/completions", json=payload, headers={AGENT_HEADER: "agent-1", **bearer(key)})
            assert answer.status_code == 200, answer.text
        assert len(double.requests) == 1  # the real upstream answered
        assert answer.json()["choices"][0]["message"]["content"] == DECISION
