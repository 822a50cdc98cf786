"""Sensors: the window sensor materializes closed windows as they come, and again when late rows arrive; the
training sensor retrains when enough new windows are scored; the promotion sensor evaluates (and, through the
gate, deploys) each new checkpoint; the rollout sensor has the newest checkpoint play the next rollout hours, so the
on-policy loop (rollouts -> window graph -> training -> rollouts by the new checkpoint) runs unattended."""

# Dagster reads the context's annotation at definition time, so annotations stay real (no __future__).
from collections.abc import Collection
from datetime import datetime

from dagster import (
    AssetRecordsFilter,
    DagsterInstance,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from babylon_assets.assets.checkpoints import trained_checkpoint
from babylon_assets.assets.scores import ruler_scores
from babylon_assets.core.sensing import parse_cursor, plan_retraining, plan_window_requests, rows_fingerprint
from babylon_assets.core.window_time import lookback_window_ids
from babylon_assets.db.store import Store
from babylon_assets.db.training_records import TrainingRecords
from babylon_assets.db.window_records import WindowRecords
from babylon_assets.jobs import promotion_job, rollouts_job, training_job, window_graph_job
from babylon_assets.orchestration.run_health import reap_dead_runs
from babylon_assets.partitions import PARTITION_TAG, RANGE_END_TAG, RANGE_START_TAG
from babylon_assets.play.live import platform_now
from babylon_assets.resources.rules import WindowRulesResource
from babylon_assets.resources.store import StoreResource
from babylon_assets.settings import Settings, get_settings

# At most this many runs per tick, each of up to SENSOR_WINDOWS_PER_RUN consecutive windows: a first tick over
# a year of history works through it 96 windows a tick instead of launching thousands of runs, and new
# windows in normal operation are picked up in small, quick runs.
MAX_RUNS_PER_TICK = 4
SENSOR_WINDOWS_PER_RUN = 24
IN_FLIGHT = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]


def evaluate_window_sensor(
    db: Store,
    rules: WindowRulesResource,
    cursor: str | None,
    now: datetime,
    partition_start: str,
    materialized: Collection[str] = frozenset(),
    being_played: Collection[str] = frozenset(),
) -> SensorResult | SkipReason:
    """One tick: run requests for closed windows with new rows, and the new cursor (or why nothing). Windows in
    `materialized` (the window graph's last asset has them) whose stored state has the rows they have now were
    materialized elsewhere (the CLI, a backfill from the UI) and are not requested again. Windows `being_played`
    (a rollout run of that hour in flight) wait: a rollout hour lies in the past, so it counts as closed while its
    seats are still being written and settled, and a graph run then would score half-played, unsettled rows."""
    requested = parse_cursor(cursor)
    row_counts = {w: n for w, n in db.window_row_counts(partition_start).items() if w not in being_played}
    unrequested = [
        w for w, count in row_counts.items() if w in materialized and requested.get(w) != rows_fingerprint(count)
    ]
    for window_id, state in WindowRecords(db).window_states(unrequested).items():
        if state["rows"] == row_counts[window_id]:
            requested[window_id] = rows_fingerprint(row_counts[window_id])
    plan = plan_window_requests(
        row_counts,
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
                tags={RANGE_START_TAG: request.first, RANGE_END_TAG: request.last},
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
    settings = get_settings()
    playing = context.instance.get_runs(RunsFilter(job_name=rollouts_job.name, statuses=IN_FLIGHT))
    return evaluate_window_sensor(
        store.get_store(),
        rules,
        context.cursor,
        platform_now(settings.LIVE_CLOCK_FILE),
        settings.PARTITION_START,
        materialized=context.instance.get_materialized_partitions(ruler_scores.key),
        being_played={run.tags[PARTITION_TAG] for run in playing if PARTITION_TAG in run.tags},
    )


def evaluate_training_sensor(
    db: Store,
    instance: DagsterInstance,
    rules: WindowRulesResource,
    cursor: str | None,
    now: datetime,
    new_before_retrain: int,
) -> SensorResult | SkipReason:
    """One tick: a training run when enough ready, scored windows (and enough new ones) exist, else why not."""
    reap_dead_runs(instance, db)  # a killed training run must not keep the sensor waiting for ever
    in_flight = len(instance.get_runs(RunsFilter(job_name=training_job.name, statuses=IN_FLIGHT), limit=5))
    records = TrainingRecords(db)
    scored = records.scored_windows(lookback_window_ids(rules.lookback_hours, now))
    states = WindowRecords(db).window_states(list(scored))
    ready_scored = sorted(w for w in scored if states.get(w, {}).get("ready"))
    last_checkpoint = records.latest_checkpoint_time()
    new = None if last_checkpoint is None else [w for w in ready_scored if scored[w] > last_checkpoint]
    decision = plan_retraining(
        ready_scored,
        new,
        min_ready=rules.min_ready_windows,
        new_before_retrain=new_before_retrain,
        in_flight=in_flight,
        cursor=cursor,
    )
    if not decision.launch:
        return SkipReason(decision.reason)
    return SensorResult(
        run_requests=[RunRequest(run_key=decision.run_key, tags={"babylon/reason": decision.reason})],
        cursor=decision.cursor,
    )


@sensor(
    job=training_job,
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=60,
    description="Launches training when >= MIN_READY_WINDOWS ready, scored windows lie in the lookback and "
    ">= NEW_WINDOWS_BEFORE_RETRAIN were scored since the last checkpoint; never while a training run is in flight.",
)
def training_sensor(context: SensorEvaluationContext, store: StoreResource, rules: WindowRulesResource):
    settings = get_settings()
    return evaluate_training_sensor(
        store.get_store(),
        context.instance,
        rules,
        context.cursor,
        platform_now(settings.LIVE_CLOCK_FILE),
        settings.NEW_WINDOWS_BEFORE_RETRAIN,
    )


def evaluate_promotion_sensor(
    instance: DagsterInstance, cursor: str | None, no_server: str | None = None
) -> SensorResult | SkipReason:
    """One tick: a promotion run for the newest trained_checkpoint materialization after the cursor (a storage
    id). Older new ones are passed over: only the newest checkpoint is worth evaluating. While no policy can be
    served (`no_server` says why), the tick skips with that reason and keeps its cursor, so the checkpoint is
    evaluated once a server can be had, instead of a run failing red."""
    after = int(cursor) if cursor else None
    found = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=trained_checkpoint.key, after_storage_id=after), limit=1, ascending=False
    )
    if not found.records:
        return SkipReason("no new checkpoint since the last promotion run")
    newest = found.records[0]
    materialization = newest.asset_materialization
    version_value = materialization.metadata.get("model_version") if materialization is not None else None
    version = str(version_value.value) if version_value is not None else ""
    if not version:
        return SensorResult(
            skip_reason=SkipReason("the newest trained_checkpoint made no checkpoint (every group had equal rewards)"),
            cursor=str(newest.storage_id),
        )
    if no_server is not None:
        return SkipReason(f"{version} waits: {no_server}")
    if len(instance.get_runs(RunsFilter(job_name=promotion_job.name, statuses=IN_FLIGHT), limit=1)):
        return SkipReason(f"{version} waits: a promotion run is in flight")
    return SensorResult(
        run_requests=[
            RunRequest(run_key=f"promote-{version}-{newest.storage_id}", tags={"babylon/model_version": version})
        ],
        cursor=str(newest.storage_id),
    )


@sensor(
    job=promotion_job,
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Evaluates each new checkpoint against its base on held-out markets; the blocking promotion gate "
    "lets only a passing one be deployed. One run at a time, newest checkpoint first.",
)
def promotion_sensor(context: SensorEvaluationContext):
    from babylon_assets.promotion.evaluation import why_no_policy_server

    settings = get_settings()
    return evaluate_promotion_sensor(context.instance, context.cursor, why_no_policy_server(settings.POLICY_API_BASE))


def evaluate_rollout_sensor(
    db: Store, instance: DagsterInstance, settings: Settings, no_server: str | None = None
) -> SensorResult | SkipReason:
    """One tick: the next rollout hour for the rollout policy while it has played fewer than NEW_WINDOWS_BEFORE_RETRAIN
    hours (then training's turn: the training sensor retrains, and the new checkpoint plays the next hours)."""
    from babylon_assets.orchestration.learning import next_rollout_hour
    from babylon_assets.play.rollouts import RolloutPlan, rollout_policy, rollout_versions

    if no_server is not None:
        return SkipReason(f"no rollouts: {no_server}")
    reap_dead_runs(instance, db)
    if instance.get_runs(RunsFilter(job_name=rollouts_job.name, statuses=IN_FLIGHT), limit=1):
        return SkipReason("a rollout run is in flight")
    if instance.get_runs(RunsFilter(job_name=training_job.name, statuses=IN_FLIGHT), limit=1):
        return SkipReason("a training run is in flight: the next rollouts wait for its checkpoint")
    plan = RolloutPlan.from_settings(settings)
    policy = rollout_policy(db, plan)
    index = next_rollout_hour(db, plan)
    played = rollout_versions(db, plan, index)
    by_policy = sum(1 for version in played.values() if version == policy.version)
    if by_policy >= settings.NEW_WINDOWS_BEFORE_RETRAIN:
        return SkipReason(
            f"{policy.version} has played {by_policy} rollout hours (NEW_WINDOWS_BEFORE_RETRAIN="
            f"{settings.NEW_WINDOWS_BEFORE_RETRAIN}): training's turn"
        )
    hour = plan.hour(index)
    if hour < settings.partition_start_window:
        return SkipReason(f"the next rollout hour {hour} lies before PARTITION_START")
    now = platform_now(settings.LIVE_CLOCK_FILE)
    if hour not in lookback_window_ids(settings.LOOKBACK_HOURS, now):
        # The training sensor trains on the lookback's windows: play outside it would never be trained on.
        return SkipReason(
            f"the next rollout hour {hour} is not a closed hour within LOOKBACK_HOURS={settings.LOOKBACK_HOURS} of "
            "now, so training would never see it: set ROLLOUT_START to a recent hour (`babylon learn` plays any hours)"
        )
    return SensorResult(
        run_requests=[
            RunRequest(
                run_key=f"rollouts-{hour}",
                partition_key=hour,
                tags={"babylon/model_version": policy.version},
            )
        ]
    )


@sensor(
    job=rollouts_job,
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Has the rollout policy (the newest checkpoint; the base before the first) play the next rollout hour "
    "until it has played NEW_WINDOWS_BEFORE_RETRAIN of them; one at a time, never while training runs.",
)
def rollout_sensor(context: SensorEvaluationContext, store: StoreResource):
    from babylon_assets.llm import local_server

    settings = get_settings()
    binary = local_server.server_binary()
    no_server = None if binary.is_file() else f"llama-server is not built yet ({binary}): run `make llm-build`"
    return evaluate_rollout_sensor(store.get_store(), context.instance, settings, no_server)
