from datetime import UTC, datetime, timedelta

from babylon_assets.core.eligibility import (
    EligibilityRules,
    WindowTally,
    agent_window_exclusion,
    readiness_verdict,
    split_window,
    stitch_agent_windows,
)
from babylon_assets.core.trajectory import parse_trajectory_rows
from tests.builders import as_trajectory_row, game_row, step

NOW = datetime(2025, 1, 15, 14, 30, tzinfo=UTC)
W = datetime(2025, 1, 15, 10, tzinfo=UTC)
RULES = EligibilityRules(min_actions=5, min_agents=3, min_ready_windows=2)


def parsed(rows):
    return list(parse_trajectory_rows([as_trajectory_row(r) for r in rows], now=NOW))


def test_ticks_of_one_agent_are_stitched_in_time_order():
    rows = [
        game_row("tick-3", "agent-1", W + timedelta(minutes=40), decisions=2, final_pnl=30.0),
        game_row("tick-1", "agent-1", W + timedelta(minutes=1), decisions=2, final_pnl=10.0),
        game_row("tick-2", "agent-1", W + timedelta(minutes=20), decisions=2, final_pnl=None, metrics={}),
        game_row("other", "agent-2", W + timedelta(minutes=5), decisions=6),
    ]
    windows = stitch_agent_windows(parsed(rows))
    assert [(w.agent_id, w.trajectory_ids) for w in windows] == [
        ("agent-1", ["tick-1", "tick-2", "tick-3"]),
        ("agent-2", ["other"]),
    ]
    stitched = windows[0]
    assert stitched.llm_decisions == 6 and len(stitched.steps) == 6
    assert stitched.final_pnl == 30.0  # the P&L at the end of the last tick
    assert stitched.agent_window_id == "agent-1@2025-01-15T10:00"
    assert windows[1].agent_window_id == "other"
    # three short ticks together are eligible although each alone has too few decisions
    assert stitched.exclusion(RULES) is None


def test_agent_window_exclusion_reasons():
    assert agent_window_exclusion(0, 1.0, 5) == "no_llm_calls"
    assert agent_window_exclusion(4, 1.0, 5) == "too_few_llm_actions"
    assert agent_window_exclusion(5, None, 5) == "missing_pnl"
    assert agent_window_exclusion(5, 0.0, 5) is None


def window_rows():
    return [
        game_row("a1", "agent-1", W + timedelta(minutes=1)),
        game_row("a2", "agent-2", W + timedelta(minutes=2)),
        game_row("a3", "agent-3", W + timedelta(minutes=3)),
        game_row("few", "agent-4", W + timedelta(minutes=4), decisions=2),
        game_row("eval", "agent-5", W + timedelta(minutes=5), is_evaluation=True),
        game_row("quiet", "agent-6", W + timedelta(minutes=6), steps=[step(0, calls=0)]),
        game_row("nopnl", "agent-7", W + timedelta(minutes=7), final_pnl=None, metrics={}),
        game_row("bad", "agent-8", W + timedelta(minutes=8), steps="[{"),
    ]


def test_split_window_sorts_every_row_into_one_bucket():
    read = split_window("2025-01-15T10:00", parsed(window_rows()), RULES)
    assert read.rows == 8
    assert sorted(aw.agent_id for aw in read.eligible) == ["agent-1", "agent-2", "agent-3"]
    reasons = sorted(reason for _, reason in read.excluded)
    assert reasons == ["evaluation", "missing_pnl", "no_llm_calls", "too_few_llm_actions"]
    assert [(q.trajectory_id, q.reason) for q in read.quarantined] == [("bad", "invalid_json")]
    assert read.agents == 7


def test_streaming_tally_agrees_with_split_window():
    items = parsed(window_rows())
    tally = WindowTally("2025-01-15T10:00")
    for item in items:
        tally.add(item)
    summary = tally.finish(RULES)
    read = split_window("2025-01-15T10:00", items, RULES)
    assert summary.rows == read.rows
    assert summary.eligible_agents == len(read.eligible)
    assert sum(summary.excluded.values()) == len(read.excluded)
    assert dict(summary.quarantined) == {"invalid_json": 1}
    assert summary.agents == read.agents
    assert summary.is_ready(RULES)


def test_verdict_says_what_is_missing():
    tally = WindowTally("2025-01-15T10:00")
    for item in parsed(window_rows()):
        tally.add(item)
    ready = tally.finish(RULES)
    thin = WindowTally("2025-01-15T11:00")
    for item in parsed([game_row("x", "agent-1", W + timedelta(hours=1, minutes=3))]):
        thin.add(item)
    thin_summary = thin.finish(RULES)
    verdict = readiness_verdict([ready, thin_summary], RULES)
    assert not verdict.ready and verdict.ready_windows == ["2025-01-15T10:00"]
    assert "1 of 2 required ready windows" in verdict.message
    assert "window 2025-01-15T11:00 has 1 eligible agent(s); need >= 3" in verdict.message
    assert readiness_verdict([ready, ready], RULES).ready
    assert "No trajectories" in readiness_verdict([], RULES).message


def test_a_full_read_and_the_streaming_tally_summarise_alike():
    items = parsed(window_rows())
    tally = WindowTally("2025-01-15T10:00")
    for item in items:
        tally.add(item)
    streamed = tally.finish(RULES)
    full = split_window("2025-01-15T10:00", items, RULES).summary()
    assert (full.rows, full.agents, full.agent_windows, full.eligible_agents) == (
        streamed.rows,
        streamed.agents,
        streamed.agent_windows,
        streamed.eligible_agents,
    )
    assert full.excluded == streamed.excluded and full.quarantined == streamed.quarantined
