"""One prompt format and one parser for every agent."""

import os

import pytest

from babylon_assets.core.agent_protocol import (
    ARCHETYPES,
    Decision,
    PredictionView,
    UnparseableResponse,
    observation_prompt,
    parse_decision,
    parse_or_hold,
    system_prompt,
)
from tests.builders import observation


def test_a_plain_json_answer_parses():
    decision = parse_decision('{"action": "OPEN_LONG", "ticker": "NVDX", "amount": 500, "leverage": 3}')
    assert decision == Decision(action="OPEN_LONG", ticker="NVDX", amount=500, leverage=3)


def test_fences_and_chatter_around_the_json_are_tolerated():
    text = 'Sure! Here is my move:\n```json\n{"action": "BUY_NO", "marketId": "pm-1", "amount": 20}\n```'
    assert parse_decision(text).action == "BUY_NO"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("I think I will buy some NVDX!", "no JSON object"),
        ('{"action": "YOLO"}', "action"),
        ('{"action": "OPEN_LONG", "leverage": 50}', "leverage"),
        ('{"action": "OPEN_LONG", "amount": -5}', "amount"),
        ('{"action": "HOLD"', "no JSON object"),
    ],
)
def test_bad_answers_are_unparseable_with_a_reason(text, problem):
    with pytest.raises(UnparseableResponse, match=problem):
        parse_decision(text)
    decision, error = parse_or_hold(text)
    assert decision.action == "HOLD" and error is not None and error.startswith("unparseable response")


def _observation(cash: float):
    return observation(
        cash,
        minute=1,
        step=1,
        steps=3,
        prices={"NVDX": 101.0},
        open_prices={"NVDX": 100.0},
        previous_prices={"NVDX": 100.5},
        funding_rates={"NVDX": 0.0004},
        pnl=cash - 10_000,
        predictions=[PredictionView("pm-1", "Will NVDX close above $102?", 0.4)],
        news=["Nvidex (NVDX) jumps 3% on a big contract"],
    )


def test_the_prompts_name_the_agent_its_style_the_market_and_the_format():
    system, user = system_prompt(), observation_prompt(_observation(9_000), "agent-01", "contrarian")
    assert '"action"' in system and "agent-01" not in system
    assert "agent-01" in user and ARCHETYPES["contrarian"] in user and "NVDX $101.00" in user and "$9,000.00" in user


def test_the_seats_of_one_decision_share_everything_up_to_their_identity():
    # The rules, the format and the market come first, so a server's prompt cache and the trainer reuse them across
    # the seats of a decision; only who the agent is and its account follow.
    first = system_prompt() + observation_prompt(_observation(9_000), "agent-01", "contrarian")
    second = system_prompt() + observation_prompt(_observation(11_000), "agent-02", "momentum")
    shared = len(os.path.commonprefix([first, second]))
    assert first[:shared].endswith("You are agent-0") and "big contract" in first[:shared]
    assert len(first) - shared < 200
