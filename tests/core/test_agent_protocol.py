"""One prompt format and one parser for every agent."""

import os

import pytest

from babylon_assets.core.agent_protocol import (
    ARCHETYPES,
    Decision,
    UnparseableResponse,
    parse_decision,
    parse_or_hold,
    system_prompt,
)


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


def test_the_system_prompt_names_the_agent_its_style_and_the_format():
    prompt = system_prompt("agent-01", "contrarian")
    assert "agent-01" in prompt and ARCHETYPES["contrarian"] in prompt and '"action"' in prompt


def test_every_seat_shares_the_system_prompt_up_to_its_identity():
    # The rules and the format come first, so a server's prompt cache reuses them across seats.
    first, second = system_prompt("agent-01", "contrarian"), system_prompt("agent-02", "momentum")
    shared = len(os.path.commonprefix([first, second]))
    assert first[:shared].endswith("You are agent-0") and shared > len(first) - 200
