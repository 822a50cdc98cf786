"""Running a window asset over every window of its run (one, or a range from a backfill), storing each
window's result as it finishes, so one failing window costs the others nothing."""

import json
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from dagster import AssetExecutionContext, BackfillPolicy, BetaWarning, Failure, MaterializeResult, MetadataValue

from .presentation import markdown_table

# A week's backfill (168 windows) runs as 7 runs of 24 windows, not 168 runs.
MAX_WINDOWS_PER_RUN = 24
WINDOW_BACKFILL_POLICY = BackfillPolicy.multi_run(max_partitions_per_run=MAX_WINDOWS_PER_RUN)
# BackfillPolicy is beta in Dagster 1.13; we depend on it knowingly, and the warning would reach every CLI user.
warnings.filterwarnings("ignore", message="Parameter `backfill_policy`", category=BetaWarning)

WindowMetadata = dict[str, Any]


def _scalar(value: Any) -> Any:
    return value if isinstance(value, (int, float, bool, str)) else None


def combine(results: Mapping[str, WindowMetadata]) -> WindowMetadata:
    """One window: its metadata. Several: totals of the numbers, and a table with a row per window."""
    if len(results) == 1:
        return next(iter(results.values()))
    windows = sorted(results)
    columns = [k for k, v in results[windows[0]].items() if _scalar(v) is not None and k != "window_id"]
    totals = {
        f"total_{k}": sum(results[w].get(k, 0) for w in windows)
        for k in columns
        if all(isinstance(results[w].get(k), int) and not isinstance(results[w].get(k), bool) for w in windows)
    }
    return {
        "windows": len(windows),
        "window_range": f"{windows[0]} .. {windows[-1]}",
        **totals,
        "per_window": markdown_table(["window", *columns],
                                     [[w, *(results[w].get(k, "") for k in columns)] for w in windows]),
    }


def for_each_window(
    context: AssetExecutionContext, work: Callable[[str], WindowMetadata | None]
) -> MaterializeResult | None:
    """Do `work` for every window of the run; raise one Failure naming the windows that failed, after the
    others are stored. Returns None when no window produced anything (nothing to materialize)."""
    results: dict[str, WindowMetadata] = {}
    failures: dict[str, str] = {}
    for window_id in context.partition_keys:
        try:
            produced = work(window_id)
        except Exception as error:  # noqa: BLE001 - one window's failure must not cost the others
            failures[window_id] = f"{type(error).__name__}: {error}"
            context.log.error(f"window {window_id} failed: {failures[window_id]}")
            continue
        if produced is not None:
            results[window_id] = produced
    if failures:
        raise Failure(
            description=f"{len(failures)} of {len(context.partition_keys)} window(s) failed "
                        f"({', '.join(sorted(failures))}); the other windows' results are stored and a retry "
                        "redoes only what is not",
            metadata={"failed_windows": MetadataValue.json(failures),
                      "stored_windows": MetadataValue.json(sorted(results))},
        )
    if not results:
        return None
    return MaterializeResult(metadata=combine(results))


def dumps(value: Any) -> str:
    """Stable JSON for the store."""
    return json.dumps(value, sort_keys=True)
