"""`babylon simulate` into a store: deterministic, idempotent, parseable, refused in a game database."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from babylon_assets.cli import app
from babylon_assets.core.eligibility import EligibilityRules
from babylon_assets.db.schema import LlmCallLog, MarketOutcome, Trajectory
from babylon_assets.db.store import Store
from babylon_assets.llm.agent import LlmEndpoint
from babylon_assets.play.simulator import SimulationPlan, simulate
from tests.conftest import NOW
from tests.doubles.openai_compatible import OpenAICompatibleTestDouble

START = datetime(2025, 1, 15, 10, tzinfo=UTC)
PLAN = SimulationPlan(agents=6, windows=2, duration_minutes=8, seed=7, start=START)
VOLATILE = {"id", "createdAt", "updatedAt"}


def table_rows(store: Store, model, order) -> list[dict]:
    with store.engine.connect() as connection:
        rows = connection.execute(select(model).order_by(order)).mappings().all()
    return [{k: v for k, v in row.items() if k not in VOLATILE} for row in rows]


def snapshot(store: Store) -> tuple:
    return (
        table_rows(store, Trajectory, Trajectory.trajectoryId),
        table_rows(store, LlmCallLog, LlmCallLog.callId),
        table_rows(store, MarketOutcome, MarketOutcome.windowId),
    )


def test_same_seed_and_start_give_the_same_rows_and_a_rerun_writes_nothing(tmp_path):
    stores = [Store(f"sqlite:///{tmp_path / f'{n}.db'}", clock=lambda: NOW) for n in range(2)]
    for store in stores:
        store.upgrade()
        summary = simulate(store, PLAN, now=NOW)
        assert summary.written == 12 and summary.skipped == 0
    first, second = (snapshot(store) for store in stores)
    assert first == second and len(first[0]) == 12 and len(first[1]) == 12 * 8
    again = simulate(stores[0], PLAN, now=NOW)
    assert again.written == 0 and again.skipped == 12
    assert snapshot(stores[0]) == first
    other_seed = Store(f"sqlite:///{tmp_path / 'other.db'}", clock=lambda: NOW)
    other_seed.upgrade()
    simulate(other_seed, replace(PLAN, seed=8), now=NOW)
    assert snapshot(other_seed)[2] != first[2]


def test_recorded_play_parses_through_the_store_boundary(store: Store):
    simulate(store, PLAN, now=NOW)
    rules = EligibilityRules(min_actions=5, min_agents=5)
    read = store.read_window("2025-01-15T10:00", rules)
    assert read.quarantined == [] and read.excluded == []
    assert len(read.eligible) == 6 and {aw.llm_decisions for aw in read.eligible} == {8}
    archetypes = {aw.trajectories[0].metadata["archetype"] for aw in read.eligible}
    assert archetypes == {"conservative", "balanced", "aggressive", "momentum", "contrarian"}
    step = read.eligible[0].steps[3]
    assert step.llmCalls[0].userPrompt.startswith("Minute 3 of the hour")
    assert json.loads(step.llmCalls[0].response)["action"] == step.action.actionType
    outcomes = store.window_outcomes("2025-01-15T10:00")
    assert len(outcomes.stocks) == 5 and len(outcomes.predictions) == 3
    assert all(p.outcome in ("YES", "NO") for p in outcomes.predictions)
    pnls = [aw.final_pnl for aw in read.eligible]
    assert len(set(pnls)) > 1, "good and bad play must differ"


def test_evaluation_play_is_held_out_and_faces_the_same_market(store: Store):
    simulate(store, PLAN, now=NOW)
    training_outcomes = store.window_outcomes("2025-01-15T10:00")
    summary = simulate(store, replace(PLAN, evaluation=True), now=NOW)
    assert summary.written == 12  # its own trajectories beside the training play
    assert store.window_outcomes("2025-01-15T10:00") == training_outcomes
    read = store.read_window("2025-01-15T10:00", EligibilityRules(min_actions=5, min_agents=5))
    assert [reason for _, reason in read.excluded] == ["evaluation"] * 6
    assert len(read.eligible) == 6


def test_open_hours_are_refused():
    store_now = datetime(2025, 1, 15, 11, 30, tzinfo=UTC)
    store = Store("sqlite://", clock=lambda: store_now)
    store.upgrade()
    with pytest.raises(ValueError, match="has not ended"):
        simulate(store, PLAN, now=store_now)


def test_llm_agents_play_through_an_openai_compatible_endpoint(store: Store):
    replies = [
        '{"action": "OPEN_LONG", "ticker": "NVDX", "amount": 500, "leverage": 2, "reasoning": "trend"}',
        "Honestly I am not sure what to do here.",
        '```json\n{"action": "HOLD", "reasoning": "wait"}\n```',
    ]
    plan = SimulationPlan(agents=2, windows=1, duration_minutes=3, seed=7, start=START)
    with OpenAICompatibleTestDouble(replies) as double:
        plan = replace(plan, llm=LlmEndpoint("openai/test-double", double.base_url, retries=0))
        summary = simulate(store, plan, now=NOW)
    assert len(double.requests) == 6
    request = double.requests[0]
    assert request["model"] == "test-double" and request["logprobs"] is True
    system, user = request["messages"][0], request["messages"][-1]
    assert system["role"] == "system" and '"action"' in system["content"]
    assert user["role"] == "user" and "You are llm-agent-01-conservative." in user["content"]
    assert summary.windows[0].unparseable == 2
    read = store.read_window("2025-01-15T10:00", EligibilityRules(min_actions=3, min_agents=1))
    # the double's replies go round both agents: agent 1 gets replies 0, 2, 1
    actions = [(s.action.actionType, s.action.success, s.action.error) for s in read.eligible[0].steps]
    assert actions[0][:2] == ("OPEN_LONG", True)
    assert actions[1] == ("HOLD", True, None)  # the fenced JSON parsed
    assert actions[2][0] == "HOLD" and not actions[2][1] and actions[2][2].startswith("unparseable response")
    assert read.eligible[0].steps[2].llmCalls[0].response == "Honestly I am not sure what to do here."
    with store.engine.connect() as connection:
        metadata = json.loads(connection.execute(select(LlmCallLog.__table__.c.metadata)).scalars().first())
    assert metadata["logprobs"][0]["token"] == '{"ac' and "logprob" in metadata["logprobs"][0]


def test_a_failing_endpoint_is_recorded_not_fatal(store: Store):
    plan = SimulationPlan(agents=1, windows=1, duration_minutes=2, seed=7, start=START)
    with OpenAICompatibleTestDouble(['{"action": "HOLD"}'], fail_first=100) as double:
        plan = replace(plan, llm=LlmEndpoint("openai/test-double", double.base_url, retries=0))
        summary = simulate(store, plan, now=NOW)
    play = summary.windows[0].plays[0]
    assert all(d.decision.action == "HOLD" and d.error.startswith("llm call failed") for d in play.decisions)


def test_the_simulate_command(monkeypatch):
    runner = CliRunner()
    result = runner.invoke(app, ["simulate", "--agents", "5", "--windows", "3", "--duration", "6", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "15 trajectories written, 0 already there" in result.output
    again = runner.invoke(app, ["simulate", "--agents", "5", "--windows", "3", "--duration", "6", "--seed", "3"])
    assert "0 trajectories written, 15 already there" in again.output
    assert runner.invoke(app, ["check-windows"]).exit_code == 0
    bad = runner.invoke(app, ["simulate", "--start", "yesterday"])
    assert bad.exit_code == 2 and "UTC hour" in bad.output
    llm = runner.invoke(app, ["simulate", "--llm"])
    assert llm.exit_code == 2 and "AGENT_MODEL" in llm.output


def test_concurrent_llm_calls_play_exactly_as_sequential_ones(tmp_path):
    from babylon_assets.core.window_play import play_window
    from babylon_assets.play.simulator import build_agents
    from tests.doubles.openai_compatible import ScriptedReply

    def by_agent(request: dict) -> ScriptedReply:  # the answer depends only on who asks and what they see
        prompt = request["messages"][-1]["content"]
        identity = prompt[prompt.index("You are ") :]
        if "decision 2 of" in prompt and ("momentum" in identity or "contrarian" in identity):
            return ScriptedReply('{"action": "OPEN_LONG", "ticker": "NVDX", "amount": 900, "leverage": 4}')
        return ScriptedReply('{"action": "HOLD"}')

    from babylon_assets.core.market import generate_window_market

    market = generate_window_market(7, "2025-01-15T10:00", duration_minutes=4)
    with OpenAICompatibleTestDouble(by_agent) as double:
        plan = SimulationPlan(agents=6, seed=7, llm=LlmEndpoint("openai/test-double", double.base_url, retries=0))
        runs = [play_window(market, build_agents(plan), window_start=START, concurrency=c) for c in (1, 6)]

    def summary(plays: list) -> list:
        return [
            (p.agent_id, p.final_pnl, [(d.step, d.decision.action, d.user_prompt) for d in p.decisions]) for p in plays
        ]

    assert summary(runs[0]) == summary(runs[1])
    assert any(p.final_pnl != 0 for p in runs[0])
