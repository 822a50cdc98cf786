"""The constrained policy: the observation's decision schema as response_format, enforced by the real llama.cpp
server (every answer parses and names what the observation offers, at temperature 1.5 too), recorded by the gateway
with its sampled token ids; and an upstream that refuses the schema is asked again without it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from babylon_assets.core.agent_protocol import observation_prompt, parse_decision, system_prompt
from babylon_assets.core.market import generate_window_market
from babylon_assets.core.perps import Account
from babylon_assets.core.window_play import execute, observe
from babylon_assets.db.schema import LlmCallLog
from babylon_assets.db.store import Store
from babylon_assets.gateway.app import Upstream
from babylon_assets.gateway.server import free_port, gateway_in_thread
from babylon_assets.llm import local_server
from babylon_assets.llm.agent import LlmAgent, LlmEndpoint
from tests.conftest import NOW
from tests.doubles.openai_compatible import OpenAICompatibleTestDouble, ScriptedReply

START = datetime(2025, 1, 15, 10, tzinfo=UTC)


@pytest.fixture(scope="module")
def parallel_llm(tmp_path_factory, llama_server) -> Iterator[str]:
    """SmolLM2 on llama.cpp with 4 slots, each holding a prompt and the schema's longest answer."""
    folder = tmp_path_factory.mktemp("constrained")
    state = local_server.serve(folder, port=free_port(), context=2048, parallel=4)
    try:
        yield state.base_url
    finally:
        local_server.stop(folder)


def observations() -> list:
    """Observations with different offers: a fresh account, and one holding a position (CLOSE is offered)."""
    from babylon_assets.core.agent_protocol import Decision

    found = []
    for seed in (3, 11):
        market = generate_window_market(seed, "2025-01-15T10:00", duration_minutes=3)
        account = Account(10_000.0)
        found.append(observe(market, account, 0, START))
        ticker = sorted(market.prices)[0]
        execute(Decision(action="OPEN_LONG", ticker=ticker, amount=500, leverage=2), account, market, 0)
        found.append(observe(market, account, 1, START + timedelta(minutes=1)))
    return found


@pytest.mark.parametrize("temperature", [1.0, 1.5])
def test_every_answer_parses_and_names_an_offered_ticker_or_market(parallel_llm, temperature) -> None:
    endpoint = LlmEndpoint(
        "openai/smollm2", parallel_llm, temperature=temperature, timeout_s=300, retries=0, neutral_sampler=True
    )
    agent = LlmAgent("agent-1", "aggressive", endpoint)
    cases = observations()
    with ThreadPoolExecutor(4) as pool:
        replies = list(
            pool.map(
                lambda obs: agent.respond(system_prompt(), observation_prompt(obs, "agent-1", "aggressive"), obs), cases
            )
        )
    for observation, reply in zip(cases, replies, strict=True):
        assert reply.error is None and reply.schema is not None and reply.note is None
        decision = parse_decision(reply.text)  # raises if it does not parse
        if decision.action in ("OPEN_LONG", "OPEN_SHORT"):
            assert decision.ticker in observation.prices
            assert decision.leverage == int(decision.leverage) and 1 <= decision.leverage <= 10
            assert decision.amount == int(decision.amount) and 0 <= decision.amount <= observation.cash
        elif decision.action == "CLOSE":
            assert decision.ticker in {p.ticker for p in observation.positions}
        elif decision.action in ("BUY_YES", "BUY_NO"):
            assert decision.marketId in {m.market_id for m in observation.predictions}
            assert decision.amount <= observation.cash
        assert len(decision.reasoning) <= 160


def test_the_gateway_records_the_sampled_token_ids_and_the_schema(tmp_path, parallel_llm) -> None:
    store = Store(f"sqlite:///{tmp_path / 'gw.db'}", clock=lambda: NOW)
    store.upgrade()
    upstream = Upstream("openai/smollm2", parallel_llm, version="base:smollm2")
    observation = observations()[1]
    with gateway_in_thread(store, upstream) as (url, recorder, key):
        endpoint = LlmEndpoint("openai/policy", url, api_key=key, via_gateway=True, timeout_s=300, retries=0)
        reply = LlmAgent("agent-1", "balanced", endpoint).respond(
            system_prompt(), observation_prompt(observation, "agent-1", "balanced"), observation
        )
        recorder.drain_from_thread(timeout_s=60)
    assert reply.error is None
    with store.engine.connect() as connection:
        (metadata,) = connection.execute(select(LlmCallLog.__table__.c.metadata)).scalars().all()
    data = json.loads(metadata)
    assert all(isinstance(token["id"], int) for token in data["logprobs"])
    assert data["sampling"]["response_format"]["json_schema"]["schema"]["anyOf"]
    answers = store.sampled_answers(["gw-agent-1-2025-01-15T10:00"])
    assert len(answers) == 1
    (answer,) = answers.values()
    assert answer.model_version == "base:smollm2" and answer.constrained and answer.aligned_with(reply.text)
    store.dispose()


def test_a_refused_schema_is_asked_again_without_it_and_the_reply_says_why(tmp_path) -> None:
    def refuse_schemas(request: dict) -> ScriptedReply:
        if "response_format" in request:
            return ScriptedReply("response_format json_schema is not supported by this model", status=400)
        return ScriptedReply('{"action": "HOLD", "reasoning": "no schema here"}')

    observation = observations()[0]
    store = Store(f"sqlite:///{tmp_path / 'refused.db'}", clock=lambda: NOW)
    store.upgrade()
    with OpenAICompatibleTestDouble(refuse_schemas) as double:
        direct = LlmAgent("agent-1", "balanced", LlmEndpoint("openai/test-double", double.base_url, retries=0))
        reply = direct.respond("system", observation_prompt(observation, "agent-1", "balanced"), observation)
        assert [("response_format" in r) for r in double.requests] == [True, False]
        assert reply.error is None and reply.schema is None and parse_decision(reply.text).action == "HOLD"
        assert reply.note and "structured output refused" in reply.note and "not supported" in reply.note
        # Through the gateway the upstream's refusal reaches the agent unchanged, and the call it asks again is
        # recorded with the reason.
        with gateway_in_thread(store, Upstream("openai/test-double", double.base_url)) as (url, recorder, key):
            endpoint = LlmEndpoint("openai/policy", url, api_key=key, via_gateway=True, retries=0)
            reply = LlmAgent("agent-2", "balanced", endpoint).respond(
                "s", observation_prompt(observation, "agent-2", "balanced"), observation
            )
            recorder.drain_from_thread(timeout_s=30)
    assert reply.error is None and reply.note
    with store.engine.connect() as connection:
        (metadata,) = connection.execute(select(LlmCallLog.__table__.c.metadata)).scalars().all()
    data = json.loads(metadata)
    assert "structured output refused" in data["note"] and "response_format" not in data.get("sampling", {})
    store.dispose()


def test_an_upstream_failure_that_is_not_a_refusal_is_not_asked_again_without_the_schema() -> None:
    observation = observations()[0]
    with OpenAICompatibleTestDouble(lambda request: ScriptedReply("model overloaded", status=503)) as double:
        agent = LlmAgent("agent-1", "balanced", LlmEndpoint("openai/test-double", double.base_url, retries=0))
        reply = agent.respond("system", observation_prompt(observation, "agent-1", "balanced"), observation)
    assert reply.error is not None and reply.note is None
    assert all("response_format" in r for r in double.requests)


def test_common_random_numbers_give_a_seat_the_same_draw_whichever_policy_asks(tmp_path, parallel_llm) -> None:
    """Paired evaluation at temperature > 0: a seat's decision is sampled with a seed of its own (the same for every
    policy that plays the seat), which the gateway records; the same policy asked twice answers the same, and other
    seats draw other numbers."""
    store = Store(f"sqlite:///{tmp_path / 'gw.db'}", clock=lambda: NOW)
    store.upgrade()
    upstream = Upstream("openai/smollm2", parallel_llm, version="base:smollm2")
    observation = observations()[0]
    with gateway_in_thread(store, upstream) as (url, recorder, key):
        endpoint = LlmEndpoint(
            "openai/policy",
            url,
            api_key=key,
            via_gateway=True,
            temperature=1.5,
            neutral_sampler=True,
            common_random_numbers=True,
            timeout_s=300,
            retries=0,
        )
        # Two policies' agents (other ids) in the same seat, and a neighbour at the same table.
        first, second = (LlmAgent(agent, "balanced", endpoint, seat_name="agent-01") for agent in ("p-01", "q-01"))
        neighbour = LlmAgent("p-02", "balanced", endpoint, seat_name="agent-02")
        prompt = observation_prompt(observation, "agent-01", "balanced")
        # The first call computes the prompt cold, in one large batch, whose sums differ from a cached prompt's in the
        # last bits: enough to move a draw that lies near a boundary. After it, the server is in the same state for
        # each call, as two policies' servers are for a seat's call in a paired evaluation.
        warm_up = first.respond(system_prompt(), prompt, observation)
        replies = [agent.respond(system_prompt(), prompt, observation) for agent in (first, second, first)]
        recorder.drain_from_thread(timeout_s=60)
    assert warm_up.error is None and all(reply.error is None for reply in replies)
    assert replies[0].text == replies[1].text == replies[2].text
    assert first.sampler_seed(observation) == second.sampler_seed(observation) != neighbour.sampler_seed(observation)
    later = observations()[1]
    assert first.sampler_seed(later) != first.sampler_seed(observation)
    with store.engine.connect() as connection:
        recorded = connection.execute(select(LlmCallLog.__table__.c.metadata)).scalars().all()
    assert {json.loads(m)["sampling"]["seed"] for m in recorded} == {first.sampler_seed(observation)}
    store.dispose()
