"""Handing runs to the instance instead of running them in-process (`--submit`, issue 21): each run is created from
the code location as the workspace loads it (so any run launcher, Celery's included, can start it elsewhere) and
submitted to the run queue, whose daemon launches it.

Dagster dedupes run keys only on sensor and schedule ticks, so a submission checks its own: a run key that already
names a queued, running or successful run is that run, not a second one. A key whose runs all failed or were
canceled is submitted again (that is the retry). The check and the creation are two steps: two submissions of one
key at the same moment can both create a run (a person at a terminal; the sensors, which do race, use Dagster's own
run keys).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from babylon_assets.orchestration.instance import project_root
from babylon_assets.orchestration.pipeline import QUIET, window_ranges
from babylon_assets.partitions import PARTITION_TAG, RANGE_END_TAG, RANGE_START_TAG

RUN_KEY_TAG = "babylon/run_key"
LOCATION_NAME = "babylon_assets"
# A run in one of these states stands for its key: submitting the key again gives this run.
_STANDING = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.SUCCESS,
    DagsterRunStatus.CANCELING,
]


@dataclass(frozen=True, slots=True)
class RunSubmission:
    """One run to hand over: its job, what it covers, its tags and run config, and the key that names it."""

    job_name: str
    label: str
    run_key: str
    tags: Mapping[str, str] = field(default_factory=dict)
    run_config: Mapping[str, Any] = field(default_factory=dict)
    asset_selection: tuple[str, ...] = ()  # empty: the whole job


@dataclass(frozen=True, slots=True)
class SubmittedRun:
    run_id: str
    label: str
    run_key: str
    status: str
    already_submitted: bool


def window_submissions(window_ids: Sequence[str], max_per_run: int, key_suffix: str = "") -> list[RunSubmission]:
    """The window graph over these windows, one ranged run per chunk, as `materialize_windows` runs them."""
    return [
        RunSubmission(
            "window_graph",
            first if first == last else f"{first} .. {last}",
            f"window_graph:{first}:{last}{key_suffix}",
            {RANGE_START_TAG: first, RANGE_END_TAG: last},
        )
        for first, last, _ in window_ranges(window_ids, max_per_run)
    ]


def rollout_submissions(window_ids: Sequence[str], key_suffix: str = "") -> list[RunSubmission]:
    """One rollout run per hour (the server switches versions only between runs)."""
    return [
        RunSubmission("rollouts_job", hour, f"rollouts:{hour}{key_suffix}", {PARTITION_TAG: hour})
        for hour in sorted(set(window_ids))
    ]


def training_submission(run_key: str, until: str = "") -> RunSubmission:
    """The dataset and a checkpoint trained on it, with the settings of the worker that runs it."""
    config: dict[str, Any] = {**QUIET, "ops": {"training_dataset": {"config": {"until": until}}}}
    return RunSubmission("training_job", "training", run_key, run_config=config)


def promotion_submission(run_key: str, deploy: bool) -> RunSubmission:
    """The newest checkpoint's evaluation, and its deploy when `deploy` and the gate passes it."""
    selection = () if deploy else ("checkpoint_evaluation",)
    label = "evaluation" + (" and deploy" if deploy else "")
    return RunSubmission("promotion_job", label, run_key, run_config=QUIET, asset_selection=selection)


def standing_run(instance: DagsterInstance, run_key: str) -> Any | None:
    """The run that stands for a key: the newest that is queued, running or succeeded."""
    runs = instance.get_runs(RunsFilter(tags={RUN_KEY_TAG: run_key}, statuses=_STANDING), limit=1)
    return runs[0] if runs else None


def submit_runs(
    instance: DagsterInstance, submissions: Sequence[RunSubmission], workspace_file: Path | None = None
) -> list[SubmittedRun]:
    """Create each run from the workspace's code location and submit it to the run queue (or name the run already
    standing for its key)."""
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import WorkspaceFileTarget

    target = WorkspaceFileTarget(paths=[str(workspace_file or project_root() / "workspace.yaml")])
    submitted: list[SubmittedRun] = []
    with WorkspaceProcessContext(instance, target) as process_context:
        workspace = process_context.create_request_context()
        location = workspace.get_code_location(LOCATION_NAME)
        (repository,) = location.get_repositories().values()
        for submission in submissions:
            standing = standing_run(instance, submission.run_key)
            if standing is not None:
                submitted.append(
                    SubmittedRun(standing.run_id, submission.label, submission.run_key, standing.status.value, True)
                )
                continue
            run = _create_run(instance, location, repository, submission)
            run = instance.submit_run(run.run_id, workspace)
            submitted.append(SubmittedRun(run.run_id, submission.label, submission.run_key, run.status.value, False))
    return submitted


def _create_run(instance: DagsterInstance, location: Any, repository: Any, submission: RunSubmission) -> Any:
    """A run of the code location's job (or of the named assets of it), with the job's origin, so that any launcher
    can reconstruct it in another process."""
    from dagster import AssetKey
    from dagster._core.definitions.selector import JobSubsetSelector

    assets = [AssetKey.from_user_string(name) for name in submission.asset_selection] or None
    remote_job = location.get_job(
        JobSubsetSelector(
            location_name=location.name,
            repository_name=repository.name,
            job_name=submission.job_name,
            op_selection=None,
            asset_selection=assets,
        )
    )
    run_config = dict(submission.run_config)
    plan = location.get_execution_plan(
        remote_job, run_config, step_keys_to_execute=None, known_state=None, instance=instance
    ).execution_plan_snapshot
    return instance.create_run(
        job_name=submission.job_name,
        run_id=None,
        run_config=run_config,
        resolved_op_selection=remote_job.resolved_op_selection,
        step_keys_to_execute=plan.step_keys_to_execute,
        op_selection=None,
        status=None,
        root_run_id=None,
        parent_run_id=None,
        tags={**remote_job.tags, **submission.tags, RUN_KEY_TAG: submission.run_key},
        job_snapshot=remote_job.job_snapshot,
        execution_plan_snapshot=plan,
        parent_job_snapshot=remote_job.parent_job_snapshot,
        remote_job_origin=remote_job.get_remote_origin(),
        job_code_origin=remote_job.get_python_origin(),
        asset_selection=frozenset(assets) if assets else None,
        asset_check_selection=None,
        asset_graph=repository.asset_graph,
    )
