"""Running the asset graph in-process on the instance (DESIGN 8): what `make demo` and the CLI use."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dagster import DagsterInstance, Definitions

# In-process runs log to the console at DEBUG by default; the CLI prints its own summary instead.
QUIET: dict[str, Any] = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@dataclass(frozen=True, slots=True)
class GraphRun:
    """One run of the graph: what it covered and whether it succeeded."""

    run_id: str
    label: str
    success: bool


def materialize_windows(
    defs: Definitions,
    window_ids: Sequence[str],
    instance: DagsterInstance,
    on_window: Callable[[GraphRun], None] | None = None,
) -> list[GraphRun]:
    """Run the window graph for each window; a failing window does not stop the others."""
    job = defs.resolve_job_def("window_graph")
    runs = []
    for window_id in window_ids:
        result = job.execute_in_process(partition_key=window_id, instance=instance, raise_on_error=False,
                                        run_config=QUIET)
        run = GraphRun(result.run_id, window_id, result.success)
        runs.append(run)
        if on_window is not None:
            on_window(run)
    return runs


def materialize_training_dataset(defs: Definitions, instance: DagsterInstance, until: str = "") -> GraphRun:
    """Assemble the training dataset from stored scores."""
    job = defs.resolve_job_def("training_dataset_job")
    result = job.execute_in_process(
        instance=instance,
        raise_on_error=False,
        run_config={**QUIET, "ops": {"training_dataset": {"config": {"until": until}}}},
    )
    return GraphRun(result.run_id, "training_dataset", result.success)
