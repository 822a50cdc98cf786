"""The window graph materialized on simulated stores: metadata, stitching, readiness, checks, writes."""

from collections.abc import Iterator
from datetime import timedelta

import pytest
from dagster import DagsterInstance
from sqlalchemy import func, select

from babylon_assets.core.window_time import parse_window_id
from babylon_assets.db.play_records import PlayRecords, RecordedPlay
from babylon_assets.db.schema import JudgmentRecord, MarketOutcome, RewardJudgment, Trajectory, table_of
from babylon_assets.db.store import Store
from babylon_assets.db.window_records import WindowRecords
from babylon_assets.definitions import build_definitions
from babylon_assets.orchestration.pipeline import materialize_training_dataset, materialize_windows
from babylon_assets.play.simulator import SimulationPlan, simulate
from babylon_assets.settings import Settings
from tests.builders import game_row
from tests.conftest import NOW, SIM_START

W = "2025-01-15T10:00"


def graph_defs(url: str, **overrides):
    return build_definitions(Settings(DATABASE_URL=url, **overrides))


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with DagsterInstance.ephemeral() as ephemeral:
        yield ephemeral


def run_window(url: str, window_id: str, instance: DagsterInstance, **overrides):
    job = graph_defs(url, **overrides).resolve_job_def("window_graph")
    return job.execute_in_process(partition_key=window_id, instance=instance, raise_on_error=False)


def metadata(result, node: str) -> dict:
    (materialization,) = result.asset_materializations_for_node(node)
    return {k: v.value for k, v in materialization.metadata.items()}


def checks(result) -> dict:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def count(store: Store, model) -> int:
    with store.engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(table_of(model))).scalar_one()


def simulated(database_url: str) -> Store:
    store = Store(database_url, clock=lambda: NOW)
    store.upgrade()
    simulate(store, SimulationPlan(agents=6, windows=2, duration_minutes=8, seed=7, start=SIM_START), now=NOW)
    return store


def test_each_window_asset_materializes_with_its_metadata(database_url, instance):
    store = simulated(database_url)
    result = run_window(database_url, W, instance)
    assert result.success
    parsed = metadata(result, "trajectories")
    assert (parsed["rows"], parsed["agents"], parsed["eligible"], parsed["ready"]) == (6, 6, 6, True)
    assert parsed["closed"] is True
    assert parsed["quarantined_total"] == 0 and parsed["excluded_total"] == 0
    assert parsed["rows_accounted"] == "rows in 6 = used 6 + excluded 0 + quarantined 0"
    truth = metadata(result, "market_outcomes")
    assert truth["recorded"] is True and (truth["stocks"], truth["predictions"]) == (5, 3)
    groups = metadata(result, "window_groups")
    assert groups["dropout_rate"] == 0.0 and groups["kept"] == 6 and groups["groups"] == 1
    assert [(r.data["group"], r.data["size"]) for r in groups["group_sizes"].records] == [("2025-01-15T10:00#g1", 6)]
    assert [(c.name, c.type) for c in groups["group_sizes"].schema.columns] == [("group", "string"), ("size", "int")]
    scores = metadata(result, "ruler_scores")
    assert scores["judge"] == "outcome" and scores["judge_is_llm"] is False
    assert "not an LLM" in scores["judge_version"]
    assert 0.0 <= scores["score_min"] <= scores["score_mean"] <= scores["score_max"] <= 1.0
    assert scores["scored"] == 6 and scores["judge_calls"] == 0
    assert scores["spearman_score_pnl"] > 0.5  # the outcome judge mostly follows risk-adjusted P&L
    assert "P&L" in scores["best_agent"] and len(scores["scores"].records) == 6
    assert {c.name: c.type for c in scores["scores"].schema.columns}["score"] == "float"
    assert scores["score_vs_pnl"].startswith("![score against P&L](data:image/svg+xml;base64,")
    assert {name: e.passed for name, e in checks(result).items()} == {
        "window_ready": True,
        "outcomes_present": True,
        "scores_valid": True,
    }
    # the game's judge columns and its latest reward_judgments row, and our history
    with store.engine.connect() as connection:
        judged = connection.execute(
            select(func.count()).where(Trajectory.aiJudgeReward.is_not(None), Trajectory.windowId == W)
        ).scalar_one()
    assert judged == 6 and count(store, RewardJudgment) == 6 and count(store, JudgmentRecord) == 6
    store.dispose()


def test_rematerializing_a_window_duplicates_nothing_and_never_pays_the_judge_twice(simulated_store, instance):
    url = simulated_store.target.url.render_as_string(hide_password=False)
    first = run_window(url, W, instance)
    assert first.success and metadata(first, "ruler_scores")["judged_now"] == 6
    again = run_window(url, W, instance)
    assert again.success
    assert metadata(again, "window_groups")["scores_kept"] == 6  # same groups: their scores stay
    assert metadata(again, "ruler_scores")["judged_now"] == 0
    assert metadata(again, "ruler_scores")["scores"] == metadata(first, "ruler_scores")["scores"]
    assert count(simulated_store, RewardJudgment) == 6 and count(simulated_store, JudgmentRecord) == 6
    with simulated_store.engine.connect() as connection:
        times = connection.execute(select(table_of(JudgmentRecord).c.times_judged)).scalars().all()
    assert set(times) == {1}
    assert len(WindowRecords(simulated_store).group_members(W)) == 6


def test_ticks_of_one_agent_are_stitched_into_one_agent_window(tmp_path, instance):
    url = f"sqlite:///{tmp_path / 'ticks.db'}"
    store = Store(url, clock=lambda: NOW)
    store.upgrade()
    start = parse_window_id(W)
    rows = [
        game_row(f"tick-{n}", "agent-ticks", start + timedelta(minutes=10 * n), decisions=2, final_pnl=float(n))
        for n in range(3)
    ]
    rows += [game_row(f"solo-{n}", f"agent-{n}", start + timedelta(minutes=n)) for n in range(5)]
    PlayRecords(store).record_play(RecordedPlay(trajectories=rows))
    PlayRecords(store).replace_market_outcomes(
        W, [{"stockTicker": "NVDX", "startPrice": 100, "endPrice": 101, "changePercent": 1, "sentiment": "neutral"}]
    )
    result = run_window(url, W, instance)
    assert result.success
    parsed = metadata(result, "trajectories")
    assert (parsed["rows"], parsed["agents"], parsed["eligible"], parsed["stitched_agent_windows"]) == (8, 6, 6, 1)
    stitched = next(m for m in WindowRecords(store).group_members(W) if m.agent_id == "agent-ticks")
    assert stitched.agent_window_id == "agent-ticks@2025-01-15T10:00"
    assert stitched.trajectory_ids_json == '["tick-0", "tick-1", "tick-2"]' and stitched.final_pnl == 2.0
    # the stitched score is written back to each of its rows
    with store.engine.connect() as connection:
        rewards = (
            connection.execute(
                select(Trajectory.aiJudgeReward).where(Trajectory.trajectoryId.in_(["tick-0", "tick-1", "tick-2"]))
            )
            .scalars()
            .all()
        )
    assert len(set(rewards)) == 1 and rewards[0] is not None
    store.dispose()


def test_a_window_that_is_not_ready_stops_at_its_groups_and_is_never_judged(tmp_path, instance):
    url = f"sqlite:///{tmp_path / 'lonely.db'}"
    store = Store(url, clock=lambda: NOW)
    store.upgrade()
    PlayRecords(store).record_play(RecordedPlay(trajectories=[game_row("only", "agent-1", parse_window_id(W))]))
    # a judge that fails if it is ever asked proves no judge call is made
    result = run_window(url, W, instance, JUDGE_MODEL="openai/would-fail-if-called")
    assert result.success
    groups = metadata(result, "window_groups")
    assert groups["ready"] is False and "has 1 eligible agent(s); need >= 5" in groups["why_not_ready"]
    assert result.asset_materializations_for_node("ruler_scores") == []
    assert [m.reason for m in WindowRecords(store).group_members(W)] == ["window_not_ready"]
    assert count(store, JudgmentRecord) == 0 and count(store, RewardJudgment) == 0
    evaluations = checks(result)
    assert evaluations["window_ready"].passed is False
    assert W in evaluations["window_ready"].metadata["failing_windows"].value
    assert evaluations["outcomes_present"].passed is False
    assert "scores_valid" not in evaluations
    store.dispose()


def test_missing_outcomes_are_flagged_not_failed(simulated_store, instance):
    with simulated_store.engine.begin() as connection:
        connection.execute(table_of(MarketOutcome).delete().where(table_of(MarketOutcome).c.windowId == W))
    url = simulated_store.target.url.render_as_string(hide_password=False)
    result = run_window(url, W, instance)
    assert result.success
    assert metadata(result, "market_outcomes")["recorded"] is False
    evaluation = checks(result)["outcomes_present"]
    assert evaluation.passed is False and W in evaluation.description
    scores = metadata(result, "ruler_scores")
    assert scores["outcomes_recorded"] is False and any(
        "timing counted as neutral" in r.data["reasoning"] for r in scores["scores"].records
    )


def test_game_read_only_writes_only_our_tables(simulated_store, instance):
    url = simulated_store.target.url.render_as_string(hide_password=False)
    assert run_window(url, W, instance, GAME_READ_ONLY=True).success
    assert count(simulated_store, RewardJudgment) == 0 and count(simulated_store, JudgmentRecord) == 6
    with simulated_store.engine.connect() as connection:
        assert connection.execute(select(func.count()).where(Trajectory.aiJudgeReward.is_not(None))).scalar_one() == 0
    assert all(m.score is not None for m in WindowRecords(simulated_store).group_members(W))


def test_the_training_dataset_unions_scored_groups_and_never_rescores(simulated_store, instance):
    url = simulated_store.target.url.render_as_string(hide_password=False)
    defs = graph_defs(url)
    empty = materialize_training_dataset(defs, instance, until="2025-01-15T14:00")
    assert empty.success
    runs = materialize_windows(defs, [W, "2025-01-15T11:00"], instance)
    assert all(run.success for run in runs)
    with simulated_store.engine.connect() as connection:
        judged_before = connection.execute(select(table_of(JudgmentRecord).c.judged_at)).scalars().all()
    job = defs.resolve_job_def("training_dataset_job")
    config = {"ops": {"training_dataset": {"config": {"until": "2025-01-15T14:00"}}}}
    result = job.execute_in_process(instance=instance, run_config=config)
    built = metadata(result, "training_dataset")
    assert (built["windows"], built["trajectories"], built["groups_kept"], built["new"]) == (2, 12, 2, True)
    assert checks(result)["dataset_not_empty"].passed
    again = job.execute_in_process(instance=instance, run_config=config)
    assert metadata(again, "training_dataset")["dataset_id"] == built["dataset_id"]
    assert metadata(again, "training_dataset")["new"] is False
    with simulated_store.engine.connect() as connection:
        assert connection.execute(select(table_of(JudgmentRecord).c.judged_at)).scalars().all() == judged_before
    record, members = WindowRecords(simulated_store).latest_dataset()
    assert record["dataset_id"] == built["dataset_id"] and len(members) == 12
    too_early = job.execute_in_process(
        instance=instance, run_config={"ops": {"training_dataset": {"config": {"until": "2025-01-15T09:00"}}}}
    )
    assert metadata(too_early, "training_dataset")["trajectories"] == 0
    assert checks(too_early)["dataset_not_empty"].passed is False


def test_ruler_scores_through_the_ruler_judge_with_one_failing_window(simulated_store, instance):
    """The window graph with JUDGE_MODEL set: RULER via litellm against a test double; a window whose judge
    answers stay bad fails alone, and a second run sends nothing already judged (the cache)."""
    import json as jsonlib
    import re

    from tests.doubles.openai_compatible import OpenAICompatibleTestDouble, ScriptedReply

    def responder(request):
        text = request["messages"][-1]["content"]
        labels = re.findall(r'<trajectory id=\\?"(\d+)\\?">', text)
        if "Ground truth of window 2025-01-15T11:00" in text:
            labels = labels[:-1]  # always one score short
        return ScriptedReply(
            jsonlib.dumps(
                {
                    "scores": [
                        {"trajectory_id": label, "explanation": f"#{label}", "score": int(label) / 10}
                        for label in labels
                    ]
                }
            )
        )

    url = simulated_store.target.url.render_as_string(hide_password=False)
    windows = [W, "2025-01-15T11:00"]
    with OpenAICompatibleTestDouble(responder) as double:
        overrides = {
            "JUDGE_MODEL": "openai/judge-double",
            "JUDGE_API_BASE": double.base_url,
            "JUDGE_RETRIES": 1,
            "JUDGE_MODE": "pinned",
        }
        defs = graph_defs(url, **overrides)
        (run,) = materialize_windows(defs, windows, instance)
        assert not run.success
        first_requests = len(double.requests)
        assert first_requests == 3  # one for the good window, two tries for the bad one
        scored = WindowRecords(simulated_store).group_members(W)
        assert all(m.judge_name == "ruler" and m.judge_version.startswith("ruler:openai/judge-double") for m in scored)
        assert all(m.score is None for m in WindowRecords(simulated_store).group_members("2025-01-15T11:00"))
        # W alone again: its scores are current, nothing is sent
        (again,) = materialize_windows(defs, [W], instance)
        assert again.success and len(double.requests) == first_requests
    with simulated_store.engine.connect() as connection:
        reasons = connection.execute(select(Trajectory.aiJudgeReasoning).where(Trajectory.windowId == W)).scalars()
        assert sorted(reasons)[0].startswith("#")
