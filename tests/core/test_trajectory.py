import json
from datetime import UTC, datetime, timedelta

import pytest

from babylon_assets.core.trajectory import (
    ParsedTrajectory,
    ParseRules,
    QuarantinedRow,
    parse_trajectory_row,
    parse_trajectory_rows,
)
from tests.builders import as_trajectory_row, game_row, step

NOW = datetime(2025, 1, 15, 14, 30, tzinfo=UTC)
START = datetime(2025, 1, 15, 10, 5, tzinfo=UTC)


def parse(**kwargs):
    return parse_trajectory_row(as_trajectory_row(game_row("t-1", "agent-1", START, **kwargs)), now=NOW)


def test_a_valid_row_parses_into_typed_steps():
    parsed = parse()
    assert isinstance(parsed, ParsedTrajectory)
    assert parsed.window_id == "2025-01-15T10:00"
    assert len(parsed.steps) == 6 and parsed.llm_decisions == 6
    assert parsed.steps[0].llmCalls[0].purpose == "action"
    assert parsed.steps[0].environmentState.agentBalance == 10_000.0
    assert parsed.final_pnl == 12.5
    assert parsed.start_time.tzinfo is not None


def quarantined(result) -> tuple[str, str]:
    assert isinstance(result, QuarantinedRow), result
    return result.reason, result.detail


def test_bad_json_is_quarantined_with_its_column():
    reason, detail = quarantined(parse(steps='[{"stepNumber": 0,'))
    assert reason == "invalid_json" and "stepsJson" in detail
    reason, detail = quarantined(parse(metrics="{not json"))
    assert reason == "invalid_json" and "metricsJson" in detail


def test_missing_field_names_the_place():
    broken = step(0)
    del broken["action"]
    reason, detail = quarantined(parse(steps=[broken]))
    assert reason == "missing_field"
    assert detail == "stepsJson[0.action] is missing"
    row = game_row("t-2", "agent-1", START)
    row["agentId"] = None
    reason, detail = quarantined(parse_trajectory_row(as_trajectory_row(row), now=NOW))
    assert (reason, detail) == ("missing_field", "agentId is null")


def test_wrong_types_are_invalid_fields():
    broken = step(0)
    broken["environmentState"]["agentBalance"] = "lots"
    reason, detail = quarantined(parse(steps=[broken]))
    assert reason == "invalid_field" and "agentBalance" in detail


def test_non_finite_pnl_is_quarantined_and_missing_pnl_is_not():
    assert quarantined(parse(final_pnl=float("nan")))[0] == "non_finite_pnl"
    reason, detail = quarantined(parse(final_pnl=None, metrics='{"finalPnL": NaN}'))
    assert reason == "non_finite_pnl" and "metricsJson" in detail
    inf_step = step(0)
    inf_step["environmentState"]["agentPnL"] = float("inf")
    assert quarantined(parse(steps=json.dumps([inf_step])))[0] == "non_finite_pnl"
    # None is not an error at the row level: the agent-window is excluded for missing P&L later.
    parsed = parse(final_pnl=None, metrics={})
    assert isinstance(parsed, ParsedTrajectory) and parsed.final_pnl is None


def test_pnl_falls_back_to_the_metrics():
    parsed = parse(final_pnl=None, metrics={"finalPnL": -3.5})
    assert isinstance(parsed, ParsedTrajectory) and parsed.final_pnl == -3.5


def test_future_timestamps_are_quarantined():
    later = NOW + timedelta(hours=2)
    result = parse_trajectory_row(as_trajectory_row(game_row("t-f", "agent-1", later)), now=NOW)
    assert quarantined(result)[0] == "future_timestamp"
    # within the tolerance a slightly fast clock is accepted
    close = NOW + timedelta(minutes=2)
    assert isinstance(
        parse_trajectory_row(as_trajectory_row(game_row("t-c", "agent-1", close)), now=NOW), ParsedTrajectory
    )


def test_null_window_id_gets_the_start_hour():
    parsed = parse(window_id=None)
    assert isinstance(parsed, ParsedTrajectory)
    assert parsed.window_id == "2025-01-15T10:00" and parsed.window_id_from_start


def test_game_window_id_is_kept_as_given():
    parsed = parse(window_id="2025-01-15T11:00:00Z")
    assert isinstance(parsed, ParsedTrajectory) and parsed.window_id == "2025-01-15T11:00"
    result = parse(window_id="season-3")
    assert quarantined(result)[0] == "unrecognised_window_id"
    assert result.window_id == "2025-01-15T10:00"


def test_a_five_megabyte_prompt_is_quarantined_before_parsing():
    huge = [step(0, user_prompt="x" * 5_000_000)]
    reason, detail = quarantined(parse(steps=huge))
    assert reason == "oversized" and "limit 2,000,000" in detail
    roomy = parse_trajectory_row(
        as_trajectory_row(game_row("t-1", "agent-1", START, steps=huge)),
        now=NOW,
        rules=ParseRules(max_chars=10_000_000),
    )
    assert isinstance(roomy, ParsedTrajectory)


def test_a_duplicate_trajectory_id_in_one_stream_is_quarantined_and_the_first_kept():
    rows = [
        as_trajectory_row(game_row("t-dup", "agent-1", START)),
        as_trajectory_row({**game_row("t-dup", "agent-2", START), "id": "row-other"}),
        as_trajectory_row(game_row("t-3", "agent-3", START)),
    ]
    results = list(parse_trajectory_rows(rows, now=NOW))
    assert isinstance(results[0], ParsedTrajectory) and results[0].agent_id == "agent-1"
    assert quarantined(results[1])[0] == "duplicate_trajectory_id"
    assert isinstance(results[2], ParsedTrajectory)


def test_no_llm_calls_still_parses_and_counts_zero_decisions():
    parsed = parse(steps=[step(n, calls=0) for n in range(4)])
    assert isinstance(parsed, ParsedTrajectory) and parsed.llm_decisions == 0


def test_row_level_exclusions():
    assert parse(is_evaluation=True).row_exclusion == "evaluation"
    assert parse(is_training_data=False).row_exclusion == "not_training_data"
    assert parse().row_exclusion is None


@pytest.mark.parametrize("openPositions", [3, [{"ticker": "NVDX", "size": 2}]])
def test_open_positions_may_be_a_count_or_a_list(openPositions):
    s = step(0)
    s["environmentState"]["openPositions"] = openPositions
    assert isinstance(parse(steps=[s]), ParsedTrajectory)


def test_a_number_as_a_string_is_taken_only_where_the_games_recorder_writes_one():
    decimals = step(0)
    decimals["environmentState"]["agentBalance"] = "10012.50"  # Prisma Decimal through JSON.stringify
    decimals["environmentState"]["agentPnL"] = "12.50"
    parsed = parse(steps=[decimals], metrics={"finalPnL": "12.50", "finalBalance": "10012.50"}, final_pnl=None)
    assert isinstance(parsed, ParsedTrajectory)
    assert parsed.steps[0].environmentState.agentBalance == 10_012.5 and parsed.final_pnl == 12.5
    for field, value in (("reward", "0.5"), ("stepNumber", "0")):
        refused = step(0)
        refused[field] = value
        reason, detail = quarantined(parse(steps=[refused]))
        assert reason == "number_as_string" and field in detail and repr(value) in detail
    temperature = step(0)
    temperature["llmCalls"][0]["temperature"] = "0.7"
    assert quarantined(parse(steps=[temperature]))[0] == "number_as_string"


def test_a_pnl_beyond_max_abs_pnl_is_quarantined():
    assert quarantined(parse(final_pnl=2e7))[0] == "pnl_out_of_range"
    wild = step(0, pnl=-5e7)
    reason, detail = quarantined(parse(steps=[wild]))
    assert reason == "pnl_out_of_range" and "agentPnL" in detail
    lenient = ParseRules(max_abs_pnl=1e9)
    row = as_trajectory_row(game_row("t-1", "agent-1", START, final_pnl=2e7))
    assert isinstance(parse_trajectory_row(row, now=NOW, rules=lenient), ParsedTrajectory)


def test_a_replayed_copy_of_another_rows_steps_is_quarantined_and_the_original_kept():
    steps = [step(n, agent="agent-1") for n in range(6)]
    # the same steps again, spelled differently (key order, spacing, 0.0 for 0): a replay all the same
    respelled = json.dumps([dict(reversed(list(s.items()))) for s in steps], indent=1).replace(
        '"reward": 0.1', '"reward": 0.10'
    )
    rows = [
        game_row("original", "agent-1", START, steps=steps),
        game_row("copy", "agent-9", START + timedelta(minutes=3), steps=respelled),
        game_row("next-hour", "agent-1", START + timedelta(hours=1), steps=steps),  # another window: not a copy here
    ]
    items = list(parse_trajectory_rows([as_trajectory_row(r) for r in rows], now=NOW))
    assert [type(i).__name__ for i in items] == ["ParsedTrajectory", "QuarantinedRow", "ParsedTrajectory"]
    assert items[1].reason == "replayed_copy" and "'original'" in items[1].detail
