"""The outcome judge and the judge interface's validation."""

import asyncio
import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from babylon_assets.core.eligibility import stitch_agent_windows
from babylon_assets.core.judging import (
    InvalidJudgment,
    JudgeGroup,
    JudgeResult,
    JudgeUsage,
    Judgment,
    MixedJudge,
    OutcomeJudge,
    average_ranks,
    spearman,
    validate_result,
)
from babylon_assets.core.outcomes import PredictionOutcome, StockOutcome, WindowOutcomes
from babylon_assets.core.trajectory import parse_trajectory_rows
from tests.builders import as_trajectory_row, game_row, step

NOW = datetime(2025, 1, 15, 14, tzinfo=UTC)
W = datetime(2025, 1, 15, 10, tzinfo=UTC)
CRASH = WindowOutcomes(
    "2025-01-15T10:00",
    stocks=[StockOutcome("NVDX", 100.0, 80.0, -20.0, "bearish", ["NVDX recalls its chips"])],
    predictions=[PredictionOutcome("pm-1", "Will NVDX fall 10%?", "YES", 0.97, 1000.0)],
)


def trader(agent, actions, pnls, final_pnl):
    steps = []
    for n, ((action, target), pnl) in enumerate(zip(actions, pnls, strict=True)):
        s = step(n, pnl=pnl, agent=agent)
        key = "marketId" if action.startswith("BUY_") else "ticker"
        s["action"] = {"actionType": action, "parameters": {key: target}, "success": True}
        s["environmentState"]["agentBalance"] = 10_000.0 + (pnl if n else 0.0)
        steps.append(s)
    return game_row(f"t-{agent}", agent, W + timedelta(minutes=1), steps=json.dumps(steps), final_pnl=final_pnl)


def constructed_window():
    rows = [
        # shorted the crash and bought YES on the fall: right on every call, best P&L
        trader(
            "skilled",
            [("OPEN_SHORT", "NVDX"), ("BUY_YES", "pm-1"), ("HOLD", "NVDX"), ("HOLD", "NVDX"), ("CLOSE", "NVDX")],
            [0, 50, 150, 300, 400],
            420.0,
        ),
        # a small loss while staying mostly out
        trader("careful", [("HOLD", "NVDX")] * 4 + [("OPEN_SHORT", "NVDX")], [0, 0, 0, -5, -10], -10.0),
        # bought the crash with leverage and bet NO: wrong on every call
        trader(
            "reckless",
            [("OPEN_LONG", "NVDX"), ("BUY_NO", "pm-1"), ("HOLD", "NVDX"), ("HOLD", "NVDX"), ("HOLD", "NVDX")],
            [0, -200, -900, -1500, -2000],
            -2100.0,
        ),
    ]
    parsed = list(parse_trajectory_rows([as_trajectory_row(r) for r in rows], now=NOW))
    return JudgeGroup("g1", "2025-01-15T10:00", stitch_agent_windows(parsed), CRASH)


def test_the_outcome_judge_ranks_a_constructed_window_as_expected():
    group = constructed_window()
    result = asyncio.run(OutcomeJudge().score([group]))
    validate_result([group], result)
    scores = {k.removeprefix("t-"): v.score for k, v in result.scores.items()}
    assert scores["skilled"] > scores["careful"] > scores["reckless"]
    assert scores["skilled"] == pytest.approx(1.0) and scores["reckless"] == pytest.approx(0.0)
    assert result.usage.calls == 0 and result.usage.dollars == 0
    reasoning = result.scores["t-skilled"].reasoning
    assert "2 of 2 directional decisions agreed" in reasoning and "not an LLM" in reasoning


def test_without_outcomes_timing_is_neutral_and_said_so():
    group = constructed_window()
    blind = JudgeGroup(group.group_id, group.window_id, group.members, WindowOutcomes(group.window_id, [], []))
    result = asyncio.run(OutcomeJudge().score([blind]))
    assert "no outcomes recorded" in result.scores["t-careful"].reasoning
    assert result.scores["t-skilled"].score > result.scores["t-reckless"].score


def test_judge_results_are_validated():
    group = constructed_window()
    ok = {aw.agent_window_id: Judgment(0.5, "fine") for aw in group.members}
    validate_result([group], JudgeResult(ok))
    with pytest.raises(InvalidJudgment, match="none for"):
        validate_result([group], JudgeResult({k: v for k, v in list(ok.items())[:2]}))
    with pytest.raises(InvalidJudgment, match="unknown id"):
        validate_result([group], JudgeResult({**ok, "stranger": Judgment(0.5, "")}))
    with pytest.raises(InvalidJudgment, match="outside"):
        validate_result([group], JudgeResult({**ok, "t-careful": Judgment(1.5, "")}))
    with pytest.raises(InvalidJudgment, match="outside"):
        validate_result([group], JudgeResult({**ok, "t-careful": Judgment(float("nan"), "")}))


def test_ranks_and_spearman():
    assert average_ranks([10, 20, 20, 5]) == [2, 3.5, 3.5, 1]
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) is None and spearman([1], [2]) is None


finite = st.floats(allow_nan=False, allow_infinity=False)
member = st.tuples(finite, finite, finite, st.one_of(st.none(), finite))  # balance, step P&L, later P&L, final


def agent_windows(members: list[tuple[float, float, float, float | None]]):
    rows = []
    for n, (balance, first_pnl, later_pnl, final_pnl) in enumerate(members):
        steps = [step(0, pnl=first_pnl, agent=f"a{n}"), step(1, pnl=later_pnl, agent=f"a{n}")]
        steps[0]["environmentState"]["agentBalance"] = balance
        steps[0]["action"] = {"actionType": "OPEN_SHORT", "parameters": {"ticker": "NVDX"}, "success": True}
        steps[1]["action"] = {"actionType": "BUY_YES", "parameters": {"marketId": "pm-1"}, "success": True}
        rows.append(game_row(f"t-{n}", f"a{n}", W + timedelta(minutes=1), steps=json.dumps(steps), final_pnl=final_pnl))
    parsed = list(parse_trajectory_rows([as_trajectory_row(r) for r in rows], now=NOW))
    return stitch_agent_windows([p for p in parsed if not hasattr(p, "reason")])


@settings(max_examples=150, deadline=None)
@given(
    members=st.lists(member, min_size=1, max_size=5),
    prices=st.tuples(finite, finite, finite),
    outcome=st.sampled_from(["YES", "NO"]),
)
def test_the_outcome_judge_is_total_over_every_finite_input(members, prices, outcome):
    start, end, change = prices
    truth = WindowOutcomes(
        "2025-01-15T10:00",
        stocks=[StockOutcome("NVDX", start, end, change, "neutral", [])],
        predictions=[PredictionOutcome("pm-1", "Will NVDX fall?", outcome, 0.5, 1.0)],
    )
    windows = agent_windows(members)
    group = JudgeGroup("g1", "2025-01-15T10:00", windows, truth)
    result = asyncio.run(OutcomeJudge().score([group]))
    assert result.failures == {}
    validate_result([group], result)  # one score in [0, 1] for every member, nothing else


def test_a_first_step_whose_balance_equals_its_pnl_is_scored_not_a_division_by_zero():
    windows = agent_windows([(250.0, 250.0, 300.0, 300.0), (10_000.0, 0.0, -5.0, -5.0)])
    group = JudgeGroup("g1", "2025-01-15T10:00", windows, CRASH)
    result = asyncio.run(OutcomeJudge().score([group]))
    assert result.failures == {} and len(result.scores) == 2


def test_a_group_that_cannot_be_scored_fails_alone():
    good = constructed_window()
    broken = JudgeGroup("g2", good.window_id, [None], CRASH)  # type: ignore[list-item]
    result = asyncio.run(OutcomeJudge().score([good, broken]))
    assert set(result.failures) == {"g2"} and len(result.scores) == 3


@dataclass(frozen=True)
class ConstantJudgeDouble:
    """A TEST DOUBLE for RULER: every member gets the same score, and one named group fails."""

    value: float
    failing_group: str | None = None
    name: str = "ruler"
    version: str = "double-v1"
    is_llm: bool = True

    async def score(self, groups):
        result = JudgeResult(scores={}, usage=JudgeUsage(calls=len(groups)))
        for group in groups:
            if group.group_id == self.failing_group:
                result.failures[group.group_id] = "the double refuses this group"
                continue
            result.scores.update({m.agent_window_id: Judgment(self.value, "constant") for m in group.members})
        return result


def test_the_mixed_judge_weighs_ruler_into_the_outcome_reward():
    group = constructed_window()
    outcome = asyncio.run(OutcomeJudge().score([group])).scores
    mixed = MixedJudge(OutcomeJudge(), ConstantJudgeDouble(1.0), ruler_weight=0.25)
    result = asyncio.run(mixed.score([group]))
    validate_result([group], result)
    for key, judgment in result.scores.items():
        assert judgment.score == pytest.approx(0.75 * outcome[key].score + 0.25)
    assert "0.25 x RULER 1.000" in result.scores["t-skilled"].reasoning and result.usage.calls == 1
    # A constant RULER keeps the outcome judge's order: the ground truth still ranks the group.
    assert result.scores["t-skilled"].score > result.scores["t-careful"].score > result.scores["t-reckless"].score


def test_a_group_the_ruler_part_fails_fails_alone_and_weights_are_bounded():
    good, other = constructed_window(), replace(constructed_window(), group_id="g2")
    mixed = MixedJudge(OutcomeJudge(), ConstantJudgeDouble(0.5, failing_group="g2"), ruler_weight=0.5)
    result = asyncio.run(mixed.score([good, other]))
    assert set(result.failures) == {"g2"} and len(result.scores) == 3
    with pytest.raises(ValueError, match="RULER_WEIGHT"):
        MixedJudge(OutcomeJudge(), ConstantJudgeDouble(0.5), ruler_weight=1.5)


@dataclass(frozen=True)
class SkippingJudgeDouble(ConstantJudgeDouble):
    """A TEST DOUBLE for a RULER that leaves one member unscored without failing its group."""

    skipped: str = "t-careful"

    async def score(self, groups):
        result = await super().score(groups)
        result.scores.pop(self.skipped, None)
        return result


def test_a_member_either_judge_skipped_fails_its_group_alone():
    good, other = constructed_window(), replace(constructed_window(), group_id="g2")
    result = asyncio.run(MixedJudge(OutcomeJudge(), SkippingJudgeDouble(0.5), ruler_weight=0.5).score([good, other]))
    assert set(result.failures) == {"g1", "g2"} and "no score" in result.failures["g1"] and result.scores == {}
