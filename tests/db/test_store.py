"""The store on the embedded SQLite file and on the real PostgreSQL server, same tests."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import MetaData, func, select

from babylon_assets.core.eligibility import EligibilityRules
from babylon_assets.core.trajectory import Action, EnvironmentState, LlmCall
from babylon_assets.core.window_time import parse_window_id
from babylon_assets.db.migrate import VERSION_TABLE
from babylon_assets.db.play_records import PlayRecords, RecordedPlay
from babylon_assets.db.recorder import RecordedLlmCall, RecorderError, TokenLogprob, TrajectoryRecorder
from babylon_assets.db.schema import OUR_SCHEMA, GameBase, LlmCallLog, OurBase, Trajectory
from babylon_assets.db.store import (
    DuplicateTrajectoryError,
    GameReadOnlyError,
    Store,
)
from babylon_assets.db.window_records import WindowRecords
from tests.builders import game_row, step
from tests.conftest import NOW

W = "2025-01-15T10:00"
W_START = parse_window_id(W)
RULES = EligibilityRules(min_actions=5, min_agents=3, min_ready_windows=1)


def count(store: Store, model) -> int:
    with store.engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(model)).scalar_one()


def _as_deployed(store: Store) -> MetaData:
    """The models' tables placed where the store puts them (our schema vanishes on SQLite)."""
    combined = MetaData()
    ours = None if store.target.is_sqlite else OUR_SCHEMA
    for table in GameBase.metadata.tables.values():
        table.to_metadata(combined)
    for table in OurBase.metadata.tables.values():
        table.to_metadata(combined, schema=ours)
    return combined


def _ours_or_the_games(name, type_, parent_names) -> bool:
    if type_ == "schema":
        return name in (None, OUR_SCHEMA)
    if type_ == "table":
        return name != VERSION_TABLE
    return True


def test_upgrade_is_idempotent_and_the_migrations_match_the_models(store: Store):
    store.upgrade()
    store.ensure_schema()
    assert store.is_up_to_date()
    with store.engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={"include_schemas": not store.target.is_sqlite, "include_name": _ours_or_the_games},
        )
        diffs = compare_metadata(context, _as_deployed(store))
    # SQLite reflects no named foreign keys the way PostgreSQL does; everything else must match.
    assert [d for d in diffs if not (isinstance(d, tuple) and d[0] in ("add_fk", "remove_fk"))] == []


def malformed_window_rows() -> list[dict]:
    """The issue's malformed fixture, beside valid rows of the same window."""
    at = lambda minutes: W_START + timedelta(minutes=minutes)  # noqa: E731
    missing_action = step(0)
    del missing_action["action"]
    return [
        # valid: three agents; agent-1 in two ticks that stitch together
        game_row("ok-1a", "agent-1", at(1), decisions=3),
        game_row("ok-1b", "agent-1", at(20), decisions=3),
        game_row("ok-2", "agent-2", at(2)),
        game_row("ok-3", "agent-3", at(3), window_id=None),  # null windowId: start hour
        # malformed
        game_row("bad-json", "agent-4", at(4), steps='[{"stepNumber": 0, "timest'),
        game_row("missing-field", "agent-5", at(5), steps=[missing_action]),
        game_row("nan-pnl", "agent-6", at(6), final_pnl=None, metrics='{"finalPnL": NaN}'),
        game_row("none-pnl", "agent-7", at(7), final_pnl=None, metrics={}),
        game_row("future", "agent-8", NOW + timedelta(days=1), window_id=W),
        game_row("no-llm", "agent-9", at(9), steps=[step(n, calls=0) for n in range(6)]),
        game_row("huge", "agent-10", at(10), steps=[step(0, user_prompt="p" * 5_000_000)]),
    ]


def test_malformed_rows_are_quarantined_or_excluded_and_every_valid_row_is_returned(store: Store):
    PlayRecords(store).record_play(RecordedPlay(trajectories=malformed_window_rows()))
    read = store.read_window(W, RULES)
    assert sorted(aw.agent_id for aw in read.eligible) == ["agent-1", "agent-2", "agent-3"]
    stitched = next(aw for aw in read.eligible if aw.agent_id == "agent-1")
    assert stitched.trajectory_ids == ["ok-1a", "ok-1b"]
    quarantined = {q.trajectory_id: q.reason for q in read.quarantined}
    assert quarantined == {
        "bad-json": "invalid_json",
        "missing-field": "missing_field",
        "nan-pnl": "non_finite_pnl",
        "future": "future_timestamp",
        "huge": "oversized",
    }
    excluded = {
        (item.trajectory_ids[0] if hasattr(item, "trajectory_ids") else item.trajectory_id): reason
        for item, reason in read.excluded
    }
    assert excluded == {"none-pnl": "missing_pnl", "no-llm": "no_llm_calls"}
    assert read.rows == 11

    # every row accounted for, in a full read and in the streaming summary alike, each excluded row with its reason
    summary = read.summary()
    assert summary.accounting == "rows in 11 = used 4 + excluded 2 + quarantined 5" and summary.accounted
    (streamed,) = [s for s in store.window_summaries(RULES, 24, NOW) if s.window_id == W]
    assert streamed.accounting == summary.accounting
    assert WindowRecords(store).replace_exclusions(W, read.excluded_row_reasons()) == 2
    WindowRecords(store).replace_exclusions(W, read.excluded_row_reasons())  # read again: replaced, not added
    assert WindowRecords(store).exclusions(W) == {"row-none-pnl": "missing_pnl", "row-no-llm": "no_llm_calls"}

    assert PlayRecords(store).record_quarantine(read.quarantined) == 5
    PlayRecords(store).record_quarantine(read.quarantined)  # seen again: updated, not duplicated
    assert store.quarantine_counts(W) == {
        "future_timestamp": 1,
        "invalid_json": 1,
        "missing_field": 1,
        "non_finite_pnl": 1,
        "oversized": 1,
    }


def test_nan_in_the_pnl_column_is_quarantined_where_the_database_keeps_it(store: Store):
    PlayRecords(store).record_play(
        RecordedPlay(trajectories=[game_row("nan-col", "agent-1", W_START, final_pnl=math.nan, metrics={})])
    )
    read = store.read_window(W, RULES)
    reasons = [q.reason for q in read.quarantined] + [r for _, r in read.excluded]
    # PostgreSQL keeps NaN in a double column; SQLite stores it as NULL, so the P&L is missing.
    expected = "non_finite_pnl" if store.engine.dialect.name == "postgresql" else "missing_pnl"
    assert reasons == [expected] and read.eligible == []


def test_summaries_count_each_window_and_the_verdict_rule(store: Store):
    PlayRecords(store).record_play(RecordedPlay(trajectories=malformed_window_rows()))
    later = W_START + timedelta(hours=2)
    PlayRecords(store).record_play(RecordedPlay(trajectories=[game_row("late-1", "agent-1", later)]))
    PlayRecords(store).replace_market_outcomes(
        W,
        [
            {
                "stockTicker": "NVDX",
                "startPrice": 100,
                "endPrice": 90,
                "changePercent": -10,
                "sentiment": "bearish",
                "newsEvents": ["NVDX misses"],
            }
        ],
    )
    summaries = {s.window_id: s for s in store.window_summaries(RULES, lookback_hours=24)}
    assert set(summaries) == {W, "2025-01-15T12:00"}
    first = summaries[W]
    # the future row is counted in W, since its game windowId names W
    assert (first.rows, first.agents, first.eligible_agents) == (11, 5, 3)  # agents whose rows parsed
    assert dict(first.excluded) == {"missing_pnl": 1, "no_llm_calls": 1}
    assert sum(first.quarantined.values()) == 5
    assert first.outcomes_recorded and first.closed and first.is_ready(RULES)
    assert not summaries["2025-01-15T12:00"].is_ready(RULES)
    # a lookback that ends before the window does not see it
    assert store.window_summaries(RULES, lookback_hours=2, until=W_START) == []


def test_outcomes_round_trip_and_replace_idempotently(store: Store):
    rows = [
        {
            "stockTicker": "NVDX",
            "startPrice": 100.25,
            "endPrice": 90.5,
            "changePercent": -9.73,
            "sentiment": "bearish",
            "newsEvents": ["NVDX guidance cut"],
        },
        {
            "predictionMarketId": "pm-1",
            "question": "Will NVDX close below $95?",
            "outcome": "YES",
            "finalProbability": 0.9123,
            "volume": 15000.0,
        },
    ]
    PlayRecords(store).replace_market_outcomes(W, rows)
    PlayRecords(store).replace_market_outcomes(W, rows)
    outcomes = store.window_outcomes(W)
    assert outcomes.recorded and len(outcomes.stocks) == 1 and len(outcomes.predictions) == 1
    stock = outcomes.stocks[0]
    assert (stock.ticker, stock.start_price, stock.end_price, stock.change_percent) == ("NVDX", 100.25, 90.5, -9.73)
    assert stock.news == ["NVDX guidance cut"]
    assert outcomes.predictions[0].outcome == "YES" and outcomes.predictions[0].final_probability == 0.9123
    assert store.windows_with_outcomes([W, "2025-01-15T11:00"]) == {W}
    assert not store.window_outcomes("2025-01-15T11:00").recorded


def record_one(store: Store, trajectory_id: str = "rec-1", *, logprobs=True) -> str:
    recorder = TrajectoryRecorder(store, clock=lambda: NOW)
    start = W_START + timedelta(minutes=59)  # starts in W, ends in the next hour
    recorder.start("agent-1", trajectory_id=trajectory_id, start_time=start)
    for n in range(5):
        call = LlmCall(
            model="m",
            modelVersion="babylon-mmo@3",
            systemPrompt="sys",
            userPrompt=f"obs {n}",
            response='{"action": "HOLD"}',
            temperature=0.2,
            maxTokens=64,
            purpose="action",
            latencyMs=12.0,
        )
        recorder.step(
            trajectory_id,
            environment_state=EnvironmentState(agentBalance=1000, agentPnL=n, openPositions=0),
            llm_calls=[
                RecordedLlmCall(
                    call,
                    prompt_tokens=30,
                    completion_tokens=5,
                    logprobs=[TokenLogprob("{", -0.01)] if logprobs else None,
                )
            ],
            action=Action(actionType="HOLD", success=True),
            reward=0.1,
            at=start + timedelta(seconds=30 * n),
        )
    return recorder.end(trajectory_id, final_pnl=4.0, final_balance=1004.0, end_time=start + timedelta(minutes=3))


def test_recorder_writes_one_transaction_in_the_start_hour_that_parses_back(store: Store):
    record_one(store)
    with store.engine.connect() as connection:
        row = connection.execute(select(Trajectory).where(Trajectory.trajectoryId == "rec-1")).mappings().one()
        calls = connection.execute(select(LlmCallLog).where(LlmCallLog.trajectoryId == "rec-1")).mappings().all()
    assert row["windowId"] == W  # the start hour, not the end hour
    assert row["episodeLength"] == 5 and row["updatedAt"] is not None
    assert len(calls) == 5 and calls[0]["totalTokens"] == 35
    assert '"logprobs"' in calls[0]["metadata"] and "babylon-mmo@3" in calls[0]["metadata"]
    read = store.read_window(W, RULES)
    assert [aw.trajectory_ids for aw in read.eligible] == [["rec-1"]]
    assert read.eligible[0].final_pnl == 4.0


def test_recording_twice_writes_nothing_the_second_time(store: Store):
    record_one(store)
    with pytest.raises(DuplicateTrajectoryError, match="already recorded"):
        record_one(store)
    assert count(store, Trajectory) == 1 and count(store, LlmCallLog) == 5


def test_recorder_misuse_is_a_clear_error(store: Store):
    recorder = TrajectoryRecorder(store, clock=lambda: NOW)
    with pytest.raises(RecorderError, match="not open"):
        recorder.end("never-started")
    recorder.start("agent-1", trajectory_id="x")
    with pytest.raises(RecorderError, match="finite"):
        recorder.end("x", final_pnl=math.inf)
    assert count(store, Trajectory) == 0


def test_game_read_only_refuses_every_write(store: Store):
    read_only = Store(store.target.url.render_as_string(hide_password=False), game_read_only=True, clock=lambda: NOW)
    try:
        with pytest.raises(GameReadOnlyError):
            PlayRecords(read_only).record_play(RecordedPlay(trajectories=[game_row("t", "agent-1", W_START)]))
        with pytest.raises(GameReadOnlyError):
            PlayRecords(read_only).replace_market_outcomes(W, [])
    finally:
        read_only.dispose()
    assert count(store, Trajectory) == 0


def test_rows_naming_different_columns_are_written_together(store: Store):
    sparse = game_row("sparse", "agent-2", W_START)
    for optional in ("finalBalance", "tradesExecuted", "isEvaluation", "windowHours"):
        sparse.pop(optional, None)
    PlayRecords(store).record_play(RecordedPlay(trajectories=[game_row("full", "agent-1", W_START), sparse]))
    assert count(store, Trajectory) == 2
    read = store.read_window(W, RULES)
    assert sorted(t for aw in read.eligible for t in aw.trajectory_ids) == ["full", "sparse"]


def test_every_record_keeper_writes_the_time_of_the_stores_own_clock(tmp_path):
    from babylon_assets.db.evaluation_records import EvaluationRecords
    from babylon_assets.db.schema import TrainedModel, table_of
    from babylon_assets.db.training_records import TrainingRecords

    clock_time = datetime(2031, 5, 4, 3, 2, 1, tzinfo=UTC)
    store = Store(f"sqlite:///{tmp_path / 'clock.db'}", clock=lambda: clock_time)
    store.upgrade()
    TrainingRecords(store).add_checkpoint(
        model_version="m@1", base_model="base", batch_id="b1", storage_path="/x", avg_reward=None, wandb_run_id=None
    )
    with store.engine.begin() as connection:
        connection.execute(table_of(TrainedModel).update().values(updatedAt=datetime(2000, 1, 1)))
    assert EvaluationRecords(store).set_gate_status("m@1", passed=True) == "ready"
    with store.engine.connect() as connection:
        row = connection.execute(table_of(TrainedModel).select()).mappings().one()
    assert row["updatedAt"] == clock_time.replace(tzinfo=None) == store.now()
    store.dispose()


def test_a_window_id_in_another_spelling_is_read_and_counted_in_the_hour_it_names(store: Store):
    nine, ten = "2025-01-15T09:00", "2025-01-15T10:00"
    rows = [
        # the game's grouping says 09:00 (spelled with a space, seconds and a zone) though the row starts at 10:45
        game_row("spelled", "agent-s", W_START + timedelta(minutes=45), window_id="2025-01-15 09:00:00+00:00"),
        game_row("plain", "agent-p", W_START + timedelta(minutes=5), window_id=ten),
        game_row("blank", "agent-b", W_START + timedelta(minutes=7), window_id=" 2025-01-15T09:00"),
    ]
    PlayRecords(store).record_play(RecordedPlay(trajectories=rows))
    read = {w: store.read_window(w, RULES) for w in (nine, ten)}
    assert [aw.agent_id for aw in read[nine].eligible] == ["agent-s"]
    assert [aw.agent_id for aw in read[ten].eligible] == ["agent-p"]
    # an id with blanks around it names no hour: quarantined in its start hour, not lost
    assert [(q.trajectory_id, q.reason) for q in read[ten].quarantined] == [("blank", "unrecognised_window_id")]
    # check-windows counts each row where the window assets read it, and so does the sensor
    summaries = {s.window_id: s for s in store.window_summaries(RULES, 24, NOW)}
    assert (summaries[nine].rows, summaries[ten].rows) == (1, 2)
    assert store.window_row_counts("2025-01-15T00:00")[nine] == 1
    assert store.windows_with_rows([nine, ten]) == {nine, ten}
