"""The gateway against a TEST DOUBLE upstream (an OpenAI-compatible server on 127.0.0.1)."""

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from starlette.testclient import TestClient

from babylon_assets.core.eligibility import EligibilityRules
from babylon_assets.db.play_records import PlayRecords
from babylon_assets.db.schema import LlmCallLog, Trajectory, table_of
from babylon_assets.db.store import Store
from babylon_assets.gateway.app import AGENT_HEADER, Upstream, create_app
from babylon_assets.gateway.recording import GatewayRecorder
from tests.doubles.openai_compatible import OpenAICompatibleTestDouble, ScriptedReply
from tests.gateway.keys import AUTH, TEST_KEYS

HOUR = datetime(2025, 1, 15, 10, tzinfo=UTC)
DECISION = '{"action": "HOLD", "reasoning": "waiting"}'


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the recorder"
        time.sleep(0.05)


def count(store: Store, model) -> int:
    with store.engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(table_of(model))).scalar_one()


def body(agent: str, minute: int) -> dict:
    return {
        "model": "whatever-the-agent-says",
        "temperature": 0.5,
        "max_tokens": 64,
        "messages": [
            {"role": "system", "content": f"You are {agent}."},
            {"role": "user", "content": f"Minute {minute}: NVDX $100."},
        ],
        "babylon": {"balance": 10_000.0 + minute, "pnl": float(minute)},
    }


def gateway(store: Store, double: OpenAICompatibleTestDouble, clock: Callable[[], datetime]):
    recorder = GatewayRecorder(store, backoff_s=0.05)
    app = create_app(
        lambda: Upstream("openai/deployed", double.base_url, version="babylon-mmo@3"), recorder, clock, keys=TEST_KEYS
    )
    return app, recorder


def test_a_call_without_the_agent_header_gets_a_clear_400(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'g.db'}")
    store.upgrade()
    with OpenAICompatibleTestDouble([DECISION]) as double:
        app, _ = gateway(store, double, lambda: HOUR)
        with TestClient(app, headers=AUTH) as client:
            response = client.post("/v1/chat/completions", json=body("a", 0))
    assert response.status_code == 400 and AGENT_HEADER in response.json()["error"]["message"]
    assert double.requests == []


def test_calls_are_forwarded_unchanged_and_recorded_into_the_agents_hour(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'g.db'}")
    store.upgrade()
    minutes = iter(range(100))
    with OpenAICompatibleTestDouble([DECISION]) as double:
        app, recorder = gateway(store, double, lambda: HOUR + timedelta(minutes=next(minutes)))
        with TestClient(app, headers=AUTH) as client:
            for minute in range(3):
                response = client.post(
                    "/v1/chat/completions", json=body("agent-7", minute), headers={AGENT_HEADER: "agent-7"}
                )
                assert response.status_code == 200
                assert response.json()["choices"][0]["message"]["content"] == DECISION
            wait_until(lambda: recorder.counters.recorded == 3)
    assert double.requests[0]["model"] == "deployed" and double.requests[0]["logprobs"] is True
    assert "babylon" not in double.requests[0]  # our field never reaches the model
    read = store.read_window("2025-01-15T10:00", EligibilityRules(min_actions=3, min_agents=1))
    (agent_window,) = read.eligible
    assert agent_window.trajectory_ids == ["gw-agent-7-2025-01-15T10:00"] and agent_window.llm_decisions == 3
    assert agent_window.final_pnl == 2.0
    assert [s.llmCalls[0].userPrompt for s in agent_window.steps] == [f"Minute {m}: NVDX $100." for m in range(3)]
    with store.engine.connect() as connection:
        metadata = connection.execute(select(table_of(LlmCallLog).c.metadata)).scalars().all()
    assert len(metadata) == 3
    assert all(json.loads(m)["logprobs"] and json.loads(m)["modelVersion"] == "babylon-mmo@3" for m in metadata)


def test_an_upstream_error_reaches_the_agent_and_nothing_is_recorded(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'g.db'}")
    store.upgrade()
    with OpenAICompatibleTestDouble(lambda r: ScriptedReply(status=429, headers={"Retry-After": "3"})) as double:
        app, recorder = gateway(store, double, lambda: HOUR)
        with TestClient(app, headers=AUTH) as client:
            response = client.post("/v1/chat/completions", json=body("agent-1", 0), headers={AGENT_HEADER: "agent-1"})
    assert response.status_code == 429
    assert "scripted 429" in response.json()["error"]["message"]
    assert count(store, Trajectory) == 0 and recorder.counters.recorded == 0


def test_a_failing_store_never_fails_the_call_and_the_record_lands_later(tmp_path, monkeypatch):
    store = Store(f"sqlite:///{tmp_path / 'g.db'}")
    store.upgrade()
    original = PlayRecords.append_gateway_calls
    outage = {"left": 3}

    def flaky(self, records):
        if outage["left"]:
            outage["left"] -= 1
            raise ConnectionError("store unreachable")
        return original(self, records)

    monkeypatch.setattr(PlayRecords, "append_gateway_calls", flaky)
    with OpenAICompatibleTestDouble([DECISION]) as double:
        app, recorder = gateway(store, double, lambda: HOUR)
        with TestClient(app, headers=AUTH) as client:
            response = client.post("/v1/chat/completions", json=body("agent-1", 0), headers={AGENT_HEADER: "agent-1"})
            assert response.status_code == 200  # answered while the store was down
            wait_until(lambda: recorder.counters.recorded == 1)
    assert recorder.counters.failed_attempts == 3
    assert count(store, LlmCallLog) == 1 and count(store, Trajectory) == 1


def test_streaming_is_relayed_and_recorded(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'g.db'}")
    store.upgrade()
    with OpenAICompatibleTestDouble([DECISION]) as double:
        app, recorder = gateway(store, double, lambda: HOUR)
        with TestClient(app, headers=AUTH) as client:
            payload = {**body("agent-1", 0), "stream": True}
            with client.stream(
                "POST", "/v1/chat/completions", json=payload, headers={AGENT_HEADER: "agent-1"}
            ) as response:
                lines = [line for line in response.iter_lines() if line.startswith("data: ")]
            wait_until(lambda: recorder.counters.recorded == 1)
    assert lines[-1] == "data: [DONE]"
    with store.engine.connect() as connection:
        (response_text,) = connection.execute(select(table_of(LlmCallLog).c.response)).scalars().all()
    assert response_text == DECISION


def test_a_deploy_switches_the_upstream_for_the_next_call(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'g.db'}")
    store.upgrade()
    with (
        OpenAICompatibleTestDouble(['{"action": "HOLD"}']) as old,
        OpenAICompatibleTestDouble(['{"action": "OPEN_LONG"}']) as new,
    ):
        serving = {"upstream": Upstream("openai/base", old.base_url, version="base@0")}
        recorder = GatewayRecorder(store, backoff_s=0.05)
        app = create_app(lambda: serving["upstream"], recorder, lambda: HOUR, keys=TEST_KEYS)
        with TestClient(app, headers=AUTH) as client:
            first = client.post("/v1/chat/completions", json=body("a", 0), headers={AGENT_HEADER: "a"})
            serving["upstream"] = Upstream("openai/ckpt", new.base_url, version="babylon-mmo@1")
            second = client.post("/v1/chat/completions", json=body("a", 1), headers={AGENT_HEADER: "a"})
            wait_until(lambda: recorder.counters.recorded == 2)
    assert "HOLD" in first.json()["choices"][0]["message"]["content"]
    assert "OPEN_LONG" in second.json()["choices"][0]["message"]["content"]
    with store.engine.connect() as connection:
        versions = [
            json.loads(m)["modelVersion"]
            for m in connection.execute(
                select(table_of(LlmCallLog).c.metadata).order_by(
                    table_of(LlmCallLog).c.timestamp, table_of(LlmCallLog).c.stepId
                )
            ).scalars()
        ]
    assert versions == ["base@0", "babylon-mmo@1"]


def test_a_provider_that_needs_translation_goes_through_litellm(tmp_path):
    """`openai/...` at an API base is passed through byte for byte; any other provider is called via litellm."""
    from babylon_assets.gateway.app import passes_through

    assert passes_through(Upstream("openai/x", "http://127.0.0.1:1/v1"))
    assert not passes_through(Upstream("hosted_vllm/x", "http://127.0.0.1:1/v1"))
    store = Store(f"sqlite:///{tmp_path / 'g.db'}")
    store.upgrade()
    with OpenAICompatibleTestDouble([DECISION]) as double:
        recorder = GatewayRecorder(store, backoff_s=0.05)
        app = create_app(
            lambda: Upstream("hosted_vllm/deployed", double.base_url, version="v@1"),
            recorder,
            lambda: HOUR,
            keys=TEST_KEYS,
        )
        with TestClient(app, headers=AUTH) as client:
            answer = client.post("/v1/chat/completions", json=body("agent-1", 0), headers={AGENT_HEADER: "agent-1"})
            wait_until(lambda: recorder.counters.recorded == 1)
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == DECISION
    assert double.requests[0]["model"] == "deployed"
    with store.engine.connect() as connection:
        (metadata,) = connection.execute(select(table_of(LlmCallLog).c.metadata)).scalars().all()
    assert json.loads(metadata)["logprobs"]


def test_an_upstream_without_logprobs_is_asked_again_without_them(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'g.db'}")
    store.upgrade()

    def no_logprobs(request):
        if request.get("logprobs"):
            return ScriptedReply("logprobs are not supported by this model", status=400)
        return ScriptedReply(DECISION)

    with OpenAICompatibleTestDouble(no_logprobs) as double:
        recorder = GatewayRecorder(store, backoff_s=0.05)
        app = create_app(lambda: Upstream("openai/deployed", double.base_url), recorder, lambda: HOUR, keys=TEST_KEYS)
        with TestClient(app, headers=AUTH) as client:
            # an agent that asked for logprobs itself gets the upstream's refusal, unchanged
            asked = client.post(
                "/v1/chat/completions", json={**body("a", 0), "logprobs": True}, headers={AGENT_HEADER: "a"}
            )
            assert asked.status_code == 400 and "not supported" in asked.json()["error"]["message"]
            # an agent that did not ask: the gateway asks again without them, and the agent is answered
            plain = client.post("/v1/chat/completions", json=body("a", 1), headers={AGENT_HEADER: "a"})
            assert plain.status_code == 200 and plain.json()["choices"][0]["message"]["content"] == DECISION
            wait_until(lambda: recorder.counters.recorded == 1)
    assert [r.get("logprobs") for r in double.requests] == [True, True, None]


def test_held_out_play_is_recorded_as_evaluation_from_its_first_call(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'g.db'}")
    store.upgrade()
    with OpenAICompatibleTestDouble([DECISION]) as double:
        app, recorder = gateway(store, double, lambda: HOUR)
        with TestClient(app, headers=AUTH) as client:
            held_out = body("eval-agent", 0)
            held_out["babylon"]["evaluation"] = True
            for agent, payload in (("eval-agent", held_out), ("train-agent", body("train-agent", 0))):
                answer = client.post("/v1/chat/completions", json=payload, headers={AGENT_HEADER: agent})
                assert answer.status_code == 200
            wait_until(lambda: recorder.counters.recorded == 2)
    assert "babylon" not in double.requests[0]
    with store.engine.connect() as connection:
        rows = dict(
            connection.execute(select(table_of(Trajectory).c.agentId, table_of(Trajectory).c.isEvaluation)).all()
        )
        training = dict(
            connection.execute(select(table_of(Trajectory).c.agentId, table_of(Trajectory).c.isTrainingData)).all()
        )
    assert rows == {"eval-agent": True, "train-agent": False}
    assert training == {"eval-agent": False, "train-agent": True}
    read = store.read_window("2025-01-15T10:00", EligibilityRules(min_actions=1, min_agents=1))
    assert [aw.agent_id for aw in read.eligible] == ["train-agent"]  # held out: never trained on
