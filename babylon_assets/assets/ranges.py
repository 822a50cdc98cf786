"""Running a window asset over every window of its run (one, or a range from a backfill), storing each
window's result as it finishes, so one failing window costs the others nothing."""

import warnings
from collections.abc import Callable, Mapping
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetMaterialization,
    AssetObservation,
    BackfillPolicy,
    BetaWarning,
    Failure,
    MaterializeResult,
    MetadataValue,
)

from .presentation import metadata_table

# A week's backfill (168 windows) runs as one run, a year's as 53: Dagster's cost per run (run creation,
# per-run event shard) is what a ranged run saves, and a window that fails costs the others nothing.
MAX_WINDOWS_PER_RUN = 168
WINDOW_BACKFILL_POLICY = BackfillPolicy.multi_run(max_partitions_per_run=MAX_WINDOWS_PER_RUN)
# BackfillPolicy is beta in Dagster 1.13; we depend on it knowingly, and the warning would reach every CLI user.
warnings.filterwarnings("ignore", message="Parameter `backfill_policy`", category=BetaWarning)

WindowMetadata = dict[str, Any]


def combine(results: Mapping[str, WindowMetadata]) -> WindowMetadata:
    """One window: its metadata. Several: totals of the counts and a compact table with a row per window.

    Dagster copies a ranged run's metadata onto every partition's materialization, so the ranged form stays
    small; each window's full detail is in the store, and in its single-window materializations. Rich values
    (tables, plots) are given as callables and built only for a single window.
    """
    if len(results) == 1:
        (only,) = results.values()
        return {k: v() if callable(v) else v for k, v in only.items()}
    windows = sorted(results)
    counts = [k for k, v in results[windows[0]].items() if isinstance(v, (int, bool)) and k != "window_id"][:6]
    totals = {
        f"total_{k}": sum(int(results[w].get(k, 0)) for w in windows)
        for k in counts
        if not any(isinstance(results[w].get(k), bool) for w in windows)
    }
    return {
        "windows": len(windows),
        "window_range": f"{windows[0]} .. {windows[-1]}",
        **totals,
        "per_window": metadata_table(["window", *counts], [[w, *(results[w].get(k) for k in counts)] for w in windows]),
    }


def observe_window(context: AssetExecutionContext, window_id: str, figures: WindowMetadata) -> None:
    """A ranged run's figures of one window as an observation of its own partition: Dagster copies the run's one
    materialization onto every partition of the range, so without it a window would show the range's totals."""
    scalars = {k: v for k, v in figures.items() if not callable(v)}
    context.log_event(AssetObservation(asset_key=context.asset_key, partition=window_id, metadata=scalars))


def for_each_window(
    context: AssetExecutionContext,
    work: Callable[[str], WindowMetadata | None],
    finish: Callable[[], None] | None = None,
) -> MaterializeResult | None:
    """Do `work` for every window of the run, then `finish` (e.g. store the run's verdicts in one write); raise
    one Failure naming the windows that failed, after the others are stored. Returns None when no window
    produced anything (nothing to materialize)."""
    results: dict[str, WindowMetadata] = {}
    failures: dict[str, str] = {}
    try:
        for window_id in context.partition_keys:
            try:
                produced = work(window_id)
            except Exception as error:  # noqa: BLE001 - one window's failure must not cost the others
                failures[window_id] = f"{type(error).__name__}: {error}"
                context.log.error(f"window {window_id} failed: {failures[window_id]}")
                continue
            if produced is not None:
                results[window_id] = produced
                if len(context.partition_keys) > 1:
                    observe_window(context, window_id, produced)
    finally:
        if finish is not None:
            finish()
    if failures:
        # The windows that were stored show materialized; only the failed ones show failed.
        for window_id in sorted(results):
            figures = {k: v for k, v in results[window_id].items() if not callable(v)}
            context.log_event(AssetMaterialization(asset_key=context.asset_key, partition=window_id, metadata=figures))
        raise Failure(
            description=f"{len(failures)} of {len(context.partition_keys)} window(s) failed "
            f"({', '.join(sorted(failures))}); the other windows' results are stored and a retry "
            "redoes only what is not",
            metadata={
                "failed_windows": MetadataValue.json(failures),
                "stored_windows": MetadataValue.json(sorted(results)),
            },
        )
    if not results:
        return None
    return MaterializeResult(metadata=combine(results))
