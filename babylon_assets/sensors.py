"""Sensors: the window sensor materializes closed windows as they come, and again when late rows arrive."""

# Dagster reads the context's annotation at definition time, so annotations stay real (no __future__).
from datetime import datetime

from dagster import (
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from babylon_assets.core.sensing import parse_cursor, plan_window_requests
from babylon_assets.core.windows import utcnow
from babylon_assets.db.store import Store
from babylon_assets.jobs import window_graph_job
from babylon_assets.resources.rules import WindowRulesResource
from babylon_assets.resources.store import StoreResource
from babylon_assets.settings import get_settings

# At most this many runs per tick, each of up to SENSOR_WINDOWS_PER_RUN consecutive windows: a first tick over
# a year of history works through it 96 windows a tick instead of launching thousands of runs, and new
# windows in normal operation are picked up in small, quick runs.
MAX_RUNS_PER_TICK = 4
SENSOR_WINDOWS_PER_RUN = 24


def evaluate_window_sensor(
    db: Store, rules: WindowRulesResource, cursor: str | None, now: datetime, partition_start: str
) -> SensorResult | SkipReason:
    """One tick: run requests for closed windows with new rows, and the new cursor (or why nothing)."""
    requested = parse_cursor(cursor)
    plan = plan_window_requests(
        db.window_row_counts(partition_start),
        db.all_windows_with_outcomes(partition_start),
        requested,
        now=now,
        grace_minutes=rules.grace_minutes,
        partition_start=partition_start,
        max_runs=MAX_RUNS_PER_TICK,
        max_windows_per_run=SENSOR_WINDOWS_PER_RUN,
    )
    if not plan.requests:
        waiting = f"; {plan.open_windows} window(s) still open" if plan.open_windows else ""
        return SkipReason(f"no closed window with new rows ({len(requested)} window(s) already requested{waiting})")
    return SensorResult(
        run_requests=[
            RunRequest(
                run_key=request.run_key,
                tags={ASSET_PARTITION_RANGE_START_TAG: request.first, ASSET_PARTITION_RANGE_END_TAG: request.last},
            )
            for request in plan.requests
        ],
        cursor=plan.cursor(),
    )


@sensor(
    job=window_graph_job,
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Requests the window graph for each closed window with trajectories, and again when late rows "
    "arrive (run key = windows + row fingerprints); at most 4 runs of 24 windows per tick.",
)
def window_sensor(context: SensorEvaluationContext, store: StoreResource, rules: WindowRulesResource):
    return evaluate_window_sensor(store.get_store(), rules, context.cursor, utcnow(), get_settings().PARTITION_START)
