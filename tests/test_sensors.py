"""The window sensor, ticked by hand with explicit cursors."""

import json
from datetime import UTC, datetime, timedelta

import pytest
from dagster import AssetKey, RunRequest, SensorResult, SkipReason, build_sensor_context

from babylon_assets.core.sensing import parse_cursor, plan_window_requests
from babylon_assets.core.window_time import parse_window_id, window_id_of
from babylon_assets.db.play_records import PlayRecords, RecordedPlay
from babylon_assets.db.store import Store
from babylon_assets.resources.rules import WindowRulesResource
from babylon_assets.resources.store import StoreResource
from babylon_assets.sensors import MAX_RUNS_PER_TICK, evaluate_window_sensor, window_sensor
from babylon_assets.settings import Settings
from tests.builders import game_row, step
from tests.conftest import NOW

RULES = WindowRulesResource.from_settings(Settings())
START = "2024-01-01T00:00"
RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"


@pytest.fixture(autouse=True)
def offline_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests train on scripted play, which is not the policy's own: the offline path (ON_POLICY=false)."""
    monkeypatch.setenv("ON_POLICY", "false")


def tick(store: Store, cursor: str | None, now: datetime = NOW) -> SensorResult | SkipReason:
    return evaluate_window_sensor(store, RULES, cursor, now, START)


def ranges(result: SensorResult) -> list[tuple[str, str]]:
    return [(r.tags[RANGE_START], r.tags[RANGE_END]) for r in result.run_requests]


def test_new_windows_then_nothing_new_then_late_rows(simulated_store):
    first = tick(simulated_store, None)
    assert isinstance(first, SensorResult)
    assert ranges(first) == [("2025-01-15T10:00", "2025-01-15T12:00")]
    assert parse_cursor(first.cursor) == {w: "n6" for w in ("2025-01-15T10:00", "2025-01-15T11:00", "2025-01-15T12:00")}
    quiet = tick(simulated_store, first.cursor)
    assert isinstance(quiet, SkipReason) and "no closed window with new rows" in quiet.skip_message
    late = game_row("late-row", "agent-late", parse_window_id("2025-01-15T11:00") + timedelta(minutes=50))
    PlayRecords(simulated_store).record_play(RecordedPlay(trajectories=[late]))
    again = tick(simulated_store, first.cursor)
    assert isinstance(again, SensorResult)
    assert ranges(again) == [("2025-01-15T11:00", "2025-01-15T11:00")]
    assert again.run_requests[0].run_key != first.run_requests[0].run_key
    assert parse_cursor(again.cursor)["2025-01-15T11:00"] == "n7"
    assert isinstance(tick(simulated_store, again.cursor), SkipReason)


def test_windows_the_cli_materialized_with_the_same_rows_are_not_requested_again(simulated_store):
    from dagster import DagsterInstance

    from babylon_assets.definitions import build_definitions
    from babylon_assets.orchestration.pipeline import materialize_windows

    url = simulated_store.target.url.render_as_string(hide_password=False)
    with DagsterInstance.ephemeral() as instance:
        (run,) = materialize_windows(build_definitions(Settings(DATABASE_URL=url)), ["2025-01-15T11:00"], instance)
        assert run.success
        materialized = instance.get_materialized_partitions(AssetKey("ruler_scores"))
    assert materialized == {"2025-01-15T11:00"}
    first = evaluate_window_sensor(simulated_store, RULES, None, NOW, START, materialized)
    assert isinstance(first, SensorResult)
    assert ranges(first) == [("2025-01-15T10:00", "2025-01-15T10:00"), ("2025-01-15T12:00", "2025-01-15T12:00")]
    late = game_row("late-row", "agent-late", parse_window_id("2025-01-15T11:00") + timedelta(minutes=50))
    PlayRecords(simulated_store).record_play(RecordedPlay(trajectories=[late]))
    again = evaluate_window_sensor(simulated_store, RULES, first.cursor, NOW, START, materialized)  # new rows
    assert isinstance(again, SensorResult) and ranges(again) == [("2025-01-15T11:00", "2025-01-15T11:00")]


def test_an_open_window_waits_for_its_outcomes_or_the_grace_period(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'open.db'}", clock=lambda: NOW)
    store.upgrade()
    hour = parse_window_id("2025-01-15T13:00")
    PlayRecords(store).record_play(
        RecordedPlay(trajectories=[game_row("open", "agent-1", hour + timedelta(minutes=5))])
    )
    just_after = hour + timedelta(hours=1, minutes=10)
    waiting = tick(store, None, now=just_after)
    assert isinstance(waiting, SkipReason) and "1 window(s) still open" in waiting.skip_message
    assert isinstance(tick(store, None, now=just_after + timedelta(minutes=5)), SensorResult)  # grace passed
    PlayRecords(store).replace_market_outcomes(
        "2025-01-15T13:00", [{"stockTicker": "NVDX", "startPrice": 1, "endPrice": 2}]
    )
    assert isinstance(tick(store, None, now=just_after), SensorResult)  # outcomes close it at once
    store.dispose()


def test_a_year_of_history_is_worked_through_a_bounded_chunk_per_tick(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'year.db'}", clock=lambda: NOW)
    store.upgrade()
    first_hour = datetime(2024, 1, 15, tzinfo=UTC)
    rows = [
        game_row(f"y{i}", "agent-1", first_hour + timedelta(hours=i), steps=[step(0)], decisions=1)
        for i in range(365 * 24)
    ]
    PlayRecords(store).record_play(RecordedPlay(trajectories=rows))
    cursor = None
    seen: list[tuple[str, str]] = []
    for _ in range(3):
        result = tick(store, cursor)
        assert isinstance(result, SensorResult)
        assert len(result.run_requests) == MAX_RUNS_PER_TICK
        for request in result.run_requests:
            first, last = request.tags[RANGE_START], request.tags[RANGE_END]
            assert (parse_window_id(last) - parse_window_id(first)) == timedelta(hours=23)
        seen += ranges(result)
        cursor = result.cursor
    assert seen[0] == (window_id_of(first_hour), window_id_of(first_hour + timedelta(hours=23)))
    assert len(set(seen)) == 12 and len(parse_cursor(cursor)) == 12 * 24  # no window requested twice
    store.dispose()


def test_planning_is_pure_and_splits_ranges_at_gaps():
    counts = {"2025-01-15T10:00": 3, "2025-01-15T11:00": 2, "2025-01-15T13:00": 4, "2023-12-31T23:00": 1}
    plan = plan_window_requests(
        counts,
        set(),
        {"2025-01-15T11:00": "n2"},
        now=NOW,
        grace_minutes=15,
        partition_start=START,
        max_runs=5,
        max_windows_per_run=24,
    )
    assert [(r.first, r.last) for r in plan.requests] == [
        ("2025-01-15T10:00", "2025-01-15T10:00"),
        ("2025-01-15T13:00", "2025-01-15T13:00"),
    ]
    assert "2023-12-31T23:00" not in plan.requested  # before PARTITION_START


def test_the_sensor_definition_ticks_with_its_resources(simulated_store):
    url = simulated_store.target.url.render_as_string(hide_password=False)
    resources = {
        "store": StoreResource.from_settings(Settings(DATABASE_URL=url)),
        "rules": WindowRulesResource.from_settings(Settings()),
    }
    from dagster import DagsterInstance

    with DagsterInstance.ephemeral() as instance:
        with build_sensor_context(cursor=None, resources=resources, instance=instance) as context:
            result = window_sensor(context)
        assert isinstance(result, SensorResult)
        (request,) = result.run_requests
        assert isinstance(request, RunRequest) and request.partition_key_range is not None
        assert json.loads(result.cursor)["v"] == 1
        with build_sensor_context(cursor=result.cursor, resources=resources, instance=instance) as context:
            assert isinstance(window_sensor(context), SkipReason)
