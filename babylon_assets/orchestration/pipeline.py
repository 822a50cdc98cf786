"""Running the asset graph in-process on the instance (DESIGN 8): what `make demo`, `babylon score` and
`babylon backfill` use. Consecutive windows run as ranges, one run per chunk (the backfill policy's size)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from dagster import AssetKey, DagsterInstance, Definitions

from babylon_assets.assets.ranges import MAX_WINDOWS_PER_RUN
from babylon_assets.core.window_time import parse_window_id
from babylon_assets.partitions import RANGE_END_TAG, RANGE_START_TAG

# In-process runs log to the console at DEBUG by default; the CLI prints its own summary instead.
QUIET: dict[str, Any] = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@dataclass(frozen=True, slots=True)
class GraphRun:
    """One run of the graph: what it covered and whether it succeeded."""

    run_id: str
    label: str
    success: bool
    windows: int = 0


def window_ranges(window_ids: Sequence[str], max_per_range: int = MAX_WINDOWS_PER_RUN) -> list[tuple[str, str, int]]:
    """Consecutive hours grouped into (first, last, count) ranges of at most `max_per_range` windows."""
    ordered = sorted(set(window_ids))
    ranges: list[tuple[str, str, int]] = []
    start = previous = None
    count = 0
    for window_id in ordered:
        consecutive = previous is not None and parse_window_id(window_id) - parse_window_id(previous) == timedelta(
            hours=1
        )
        if start is None or not consecutive or count == max_per_range:
            if start is not None and previous is not None:
                ranges.append((start, previous, count))
            start, count = window_id, 0
        previous = window_id
        count += 1
    if start is not None and previous is not None:
        ranges.append((start, previous, count))
    return ranges


def materialize_windows(
    defs: Definitions,
    window_ids: Sequence[str],
    instance: DagsterInstance,
    on_run: Callable[[GraphRun], None] | None = None,
    max_per_run: int = MAX_WINDOWS_PER_RUN,
) -> list[GraphRun]:
    """Run the window graph over the windows, one run per range; a failing range does not stop the others."""
    job = defs.resolve_job_def("window_graph")
    runs = []
    for first, last, count in window_ranges(window_ids, max_per_run):
        result = job.execute_in_process(
            instance=instance,
            raise_on_error=False,
            run_config=QUIET,
            tags={RANGE_START_TAG: first, RANGE_END_TAG: last},
        )
        run = GraphRun(result.run_id, first if first == last else f"{first} .. {last}", result.success, count)
        runs.append(run)
        if on_run is not None:
            on_run(run)
    return runs


def materialize_rollouts(
    defs: Definitions,
    window_ids: Sequence[str],
    instance: DagsterInstance,
    on_run: Callable[[GraphRun], None] | None = None,
) -> list[GraphRun]:
    """Play rollout hours with the rollout policy, one run per hour (the server switches versions between runs)."""
    job = defs.resolve_job_def("rollouts_job")
    runs = []
    for window_id in sorted(set(window_ids)):
        result = job.execute_in_process(
            instance=instance, raise_on_error=False, run_config=QUIET, partition_key=window_id
        )
        run = GraphRun(result.run_id, window_id, result.success, 1)
        runs.append(run)
        if on_run is not None:
            on_run(run)
    return runs


def _run_from_dataset(defs: Definitions, instance: DagsterInstance, job_name: str, label: str, until: str) -> GraphRun:
    """Run a job that starts at training_dataset (whose lookback ends at `until`)."""
    result = defs.resolve_job_def(job_name).execute_in_process(
        instance=instance,
        raise_on_error=False,
        run_config={**QUIET, "ops": {"training_dataset": {"config": {"until": until}}}},
    )
    return GraphRun(result.run_id, label, result.success)


def materialize_training_dataset(defs: Definitions, instance: DagsterInstance, until: str = "") -> GraphRun:
    """Assemble the training dataset from stored scores."""
    return _run_from_dataset(defs, instance, "training_dataset_job", "training_dataset", until)


def materialize_training(defs: Definitions, instance: DagsterInstance, until: str = "") -> GraphRun:
    """Assemble the training dataset from stored scores and train a checkpoint on it."""
    return _run_from_dataset(defs, instance, "training_job", "training", until)


@dataclass(frozen=True, slots=True)
class PromotionRun:
    """A promotion run: whether the evaluation and the deploy materialized. A failing gate fails the run
    (its check is blocking) after the evaluation was stored, so `success` alone does not say what happened."""

    run_id: str
    success: bool
    evaluated: bool
    deployed: bool


def materialize_promotion(defs: Definitions, instance: DagsterInstance, *, deploy: bool = True) -> PromotionRun:
    """Evaluate the newest checkpoint and, where the blocking gate passes it, deploy it (deploy=False: only
    the evaluation and the gate's verdict)."""
    job = defs.resolve_job_def("promotion_job")
    selection = None if deploy else [AssetKey("checkpoint_evaluation")]
    result = job.execute_in_process(
        instance=instance, raise_on_error=False, run_config=QUIET, asset_selection=selection
    )
    materialized = {
        event.asset_key.path[-1]
        for event in result.all_events
        if event.is_step_materialization and event.asset_key is not None
    }
    return PromotionRun(
        result.run_id, result.success, "checkpoint_evaluation" in materialized, "deployed_model" in materialized
    )
