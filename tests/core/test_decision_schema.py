"""The per-observation decision schema: every answer it allows parses as a Decision and names an offered ticker or
market; anything else (an invented ticker, a float amount, a long reasoning, an extra field) it refuses."""

import json

import pytest
from jsonschema import Draft202012Validator

from babylon_assets.core.agent_protocol import Decision, Observation, PositionView, PredictionView, parse_decision
from babylon_assets.core.decision_schema import (
    REASONING_MAX_CHARS,
    decision_schema,
    max_answer_tokens,
    response_format,
)
from tests.builders import observation

OBSERVATION = Observation(
    minute=3,
    step=3,
    steps=10,
    prices={"NVDX": 101.0, "MEME": 7.5},
    open_prices={"NVDX": 100.0, "MEME": 8.0},
    previous_prices={"NVDX": 100.5, "MEME": 7.6},
    funding_rates={"NVDX": 0.0, "MEME": 0.0},
    cash=9_500.4,
    equity=10_010.0,
    pnl=10.0,
    positions=[PositionView("NVDX", "long", 5.0, 100.0, 2.0, 250.0, 5.0, 51.0)],
    predictions=[PredictionView("pm-1", "Will NVDX close above $100?", 0.6)],
)


def valid(answer: dict) -> bool:
    return Draft202012Validator(decision_schema(OBSERVATION)).is_valid(answer)


@pytest.mark.parametrize(
    "answer",
    [
        {"action": "OPEN_LONG", "ticker": "NVDX", "amount": 500, "leverage": 3, "reasoning": "trend"},
        {"action": "OPEN_SHORT", "ticker": "MEME", "amount": 9_500, "leverage": 10, "reasoning": ""},
        {"action": "CLOSE", "ticker": "NVDX", "reasoning": "take profit"},
        {"action": "BUY_YES", "marketId": "pm-1", "amount": 100, "reasoning": "cheap"},
        {"action": "HOLD", "reasoning": "x" * REASONING_MAX_CHARS},
    ],
)
def test_every_answer_the_schema_allows_parses_as_a_decision(answer):
    assert valid(answer)
    decision = parse_decision(json.dumps(answer))
    assert isinstance(decision, Decision) and decision.action == answer["action"]


@pytest.mark.parametrize(
    "answer",
    [
        {"action": "OPEN_LONG", "ticker": "LIMITER-AMES", "amount": 500, "leverage": 3, "reasoning": "made up"},
        {"action": "OPEN_LONG", "ticker": "NVDX", "amount": 500.5, "leverage": 3, "reasoning": "float amount"},
        {"action": "OPEN_LONG", "ticker": "NVDX", "amount": 9_501, "leverage": 3, "reasoning": "more than cash"},
        {"action": "OPEN_LONG", "ticker": "NVDX", "amount": 500, "leverage": 11, "reasoning": "too much"},
        {"action": "CLOSE", "ticker": "MEME", "reasoning": "not held"},
        {"action": "BUY_NO", "marketId": "pm-9", "amount": 10, "reasoning": "no such market"},
        {"action": "HOLD", "reasoning": "x" * (REASONING_MAX_CHARS + 1)},
        {"action": "HOLD", "reasoning": "fine", "ticker": "NVDX"},
        {"action": "HOLD"},
    ],
)
def test_an_answer_outside_the_observations_choices_is_refused(answer):
    assert not valid(answer)


def test_choices_follow_the_observation_and_max_tokens_covers_the_longest_answer():
    bare = observation()
    actions = [branch["properties"]["action"]["enum"] for branch in decision_schema(bare)["anyOf"]]
    assert actions == [["OPEN_LONG", "OPEN_SHORT"], ["HOLD"]]  # nothing held, no market: no CLOSE, no shares
    schema = decision_schema(OBSERVATION)
    longest = json.dumps(
        {
            "action": "OPEN_SHORT",
            "ticker": "NVDX",
            "amount": 9500,
            "leverage": 10,
            "reasoning": "é" * REASONING_MAX_CHARS,
        }
    )
    assert max_answer_tokens(schema) >= len(longest)
    fields = {name for branch in schema["anyOf"] for name in branch["properties"]}
    assert fields <= set(Decision.model_fields)  # built from the one Decision model
    assert response_format(OBSERVATION)["json_schema"]["schema"] == schema
