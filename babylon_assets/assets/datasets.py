"""The training dataset: scored groups of the last LOOKBACK_HOURS (never re-scores)."""

import json

from dagster import AssetExecutionContext, Config, MaterializeResult, asset

from babylon_assets.core.dataset_assembly import plan_dataset
from babylon_assets.core.window_time import as_utc, lookback_window_ids, parse_window_id, utcnow
from babylon_assets.db.window_records import WindowRecords
from babylon_assets.resources.rules import WindowRulesResource
from babylon_assets.resources.store import StoreResource

from .presentation import counts_table, metadata_table
from .scores import ruler_scores


class TrainingDatasetConfig(Config):
    """Where the lookback ends: a window id or time (UTC); empty means now."""

    until: str = ""


@asset(group_name="training", deps=[ruler_scores], kinds={"sql"})
def training_dataset(
    context: AssetExecutionContext, config: TrainingDatasetConfig, store: StoreResource, rules: WindowRulesResource
) -> MaterializeResult:
    """The union of scored groups in the lookback, minus zero-variance and unscored groups (DESIGN 4)."""
    db = store.get_store()
    until = parse_window_id(config.until) if config.until else as_utc(utcnow())
    window_ids = lookback_window_ids(rules.lookback_hours, until)
    plan = plan_dataset(WindowRecords(db).scored_members(window_ids))
    record = {
        "dataset_id": plan.dataset_id,
        "created_at": as_utc(db.clock()),
        "until_window": window_ids[-1],
        "lookback_hours": rules.lookback_hours,
        "windows": plan.windows,
        "groups": plan.groups,
        "trajectories": len(plan.members),
        "dropped_json": json.dumps(dict(plan.dropped_groups), sort_keys=True),
    }
    created = (
        WindowRecords(db).save_dataset(
            record,
            [
                {
                    "agent_window_id": m.agent_window_id,
                    "window_id": m.window_id,
                    "group_id": m.group_id,
                    "reward": m.reward,
                }
                for m in plan.members
            ],
        )
        if plan.members
        else False
    )
    per_window: dict[str, int] = {}
    for m in plan.members:
        per_window[m.window_id] = per_window.get(m.window_id, 0) + 1
    if not plan.members:
        context.log.warning(f"no scored group with varying rewards in the {rules.lookback_hours} h before {until}")
    return MaterializeResult(
        metadata={
            "dataset_id": plan.dataset_id if plan.members else "",
            "new": created,
            "lookback": f"{window_ids[0]} .. {window_ids[-1]} ({rules.lookback_hours} h)",
            "windows": plan.windows,
            "trajectories": len(plan.members),
            "groups_kept": plan.groups,
            "groups_dropped": counts_table(plan.dropped_groups),
            "trajectories_per_window": metadata_table(["window", "trajectories"], sorted(per_window.items())),
        }
    )
