"""The rollout sensor, ticked by hand: the next rollout hour for the newest policy, until it has played
NEW_WINDOWS_BEFORE_RETRAIN hours (then training's turn); never for hours training would not see."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dagster import DagsterInstance, SensorResult, SkipReason

from babylon_assets.core.window_time import window_id_of, window_start
from babylon_assets.db.play_records import PlayRecords
from babylon_assets.db.store import Store
from babylon_assets.gateway.recording import CallRecord
from babylon_assets.play.rollouts import RolloutPlan
from babylon_assets.sensors import evaluate_rollout_sensor
from babylon_assets.settings import Settings


def played_by(store: Store, plan: RolloutPlan, hour: str, version: str) -> None:
    """Every seat of a rollout hour as the gateway records it: one call each, with sampled token ids."""
    at = datetime.fromisoformat(hour).replace(tzinfo=UTC) + timedelta(minutes=1)
    records = [
        CallRecord(
            call_id=f"{agent}-{hour}",
            agent_id=agent,
            at=at,
            model=f"openai/{version}",
            model_version=version,
            system_prompt="s",
            user_prompt="u",
            messages=[],
            response='{"action": "HOLD"}',
            temperature=1.0,
            max_tokens=64,
            latency_ms=1.0,
            logprobs=[{"token": '{"action": "HOLD"}', "logprob": -0.1, "id": 5}],
            agent_state={"balance": 10_000.0, "pnl": 0.0, "openPositions": 0},
        )
        for agent, _ in plan.agent_ids()
    ]
    PlayRecords(store).append_gateway_calls(records)


def test_the_newest_policy_plays_the_next_hours_until_it_is_trainings_turn(tmp_path) -> None:
    now = datetime.now(UTC)
    start = window_id_of(window_start(now) - timedelta(hours=10))
    settings = Settings(
        DATABASE_URL=f"sqlite:///{tmp_path / 'store.db'}", ROLLOUT_START=start, NEW_WINDOWS_BEFORE_RETRAIN=2
    )
    store = Store.from_settings(settings)
    store.upgrade()
    plan = RolloutPlan.from_settings(settings)
    base = f"base:{settings.BASE_MODEL}"
    with DagsterInstance.ephemeral() as instance:
        first = evaluate_rollout_sensor(store, instance, settings)
        assert isinstance(first, SensorResult)
        (request,) = first.run_requests
        assert request.partition_key == plan.hour(0) and request.run_key == f"rollouts-{plan.hour(0)}"
        assert request.tags["babylon/model_version"] == base
        played_by(store, plan, plan.hour(0), base)
        second = evaluate_rollout_sensor(store, instance, settings)
        assert isinstance(second, SensorResult) and second.run_requests[0].partition_key == plan.hour(1)
        played_by(store, plan, plan.hour(1), base)
        waiting = evaluate_rollout_sensor(store, instance, settings)
        assert isinstance(waiting, SkipReason) and "training's turn" in str(waiting.skip_message)
        assert "no rollouts" in str(evaluate_rollout_sensor(store, instance, settings, "not built").skip_message)
    store.dispose()


def test_hours_outside_the_lookback_are_never_requested(tmp_path) -> None:
    settings = Settings(DATABASE_URL=f"sqlite:///{tmp_path / 'store.db'}", ROLLOUT_START="2025-03-01T00:00")
    store = Store.from_settings(settings)
    store.upgrade()
    with DagsterInstance.ephemeral() as instance:
        skipped = evaluate_rollout_sensor(store, instance, settings)
    assert isinstance(skipped, SkipReason) and "LOOKBACK_HOURS" in str(skipped.skip_message)
    store.dispose()


def test_the_window_sensor_waits_for_an_hour_whose_rollouts_are_still_playing(tmp_path) -> None:
    from babylon_assets.resources.rules import WindowRulesResource
    from babylon_assets.sensors import evaluate_window_sensor

    now = datetime.now(UTC)
    start = window_id_of(window_start(now) - timedelta(hours=10))
    settings = Settings(DATABASE_URL=f"sqlite:///{tmp_path / 'store.db'}", ROLLOUT_START=start)
    store = Store.from_settings(settings)
    store.upgrade()
    plan = RolloutPlan.from_settings(settings)
    hour = plan.hour(0)
    played_by(store, plan, hour, f"base:{settings.BASE_MODEL}")  # some seats are in, the rest still playing
    rules = WindowRulesResource.from_settings(settings)
    # A rollout hour lies in the past, so it counts as closed: while its run is in flight it is not requested.
    waiting = evaluate_window_sensor(store, rules, None, now, start, being_played={hour})
    assert isinstance(waiting, SkipReason)
    played = evaluate_window_sensor(store, rules, None, now, start)
    assert (
        isinstance(played, SensorResult) and played.run_requests[0].tags["dagster/asset_partition_range_start"] == hour
    )
    store.dispose()
