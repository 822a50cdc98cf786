"""Hourly window assets: the window's trajectories, its market outcomes, and its dropout groups."""

# Dagster reads the context's annotation at definition time, so annotations stay real (no __future__).
import json

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from babylon_assets.core.dropout import assign_groups, dropout_rate
from babylon_assets.core.window_time import is_window_closed
from babylon_assets.db.play_records import PlayRecords
from babylon_assets.db.window_records import WindowRecords
from babylon_assets.partitions import WINDOW_PARTITIONS
from babylon_assets.resources.rules import WindowRulesResource
from babylon_assets.resources.store import StoreResource

from .presentation import counts_table, metadata_table
from .ranges import WINDOW_BACKFILL_POLICY, WindowMetadata, for_each_window

READY_CHECK = "window_ready"
OUTCOMES_CHECK = "outcomes_present"


@asset(partitions_def=WINDOW_PARTITIONS, backfill_policy=WINDOW_BACKFILL_POLICY, group_name="windows", kinds={"sql"})
def trajectories(context: AssetExecutionContext, store: StoreResource, rules: WindowRulesResource) -> MaterializeResult:
    """The window's recorded play, parsed and validated, stitched into one agent-window per agent."""
    db = store.get_store()
    eligibility = rules.eligibility()
    with_outcomes = db.windows_with_outcomes(context.partition_keys)

    def parse_window(window_id: str) -> WindowMetadata:
        read = db.read_window(window_id, eligibility)
        PlayRecords(db).record_quarantine(read.quarantined)
        WindowRecords(db).replace_exclusions(window_id, read.excluded_row_reasons())
        summary = read.summary()
        WindowRecords(db).save_window_state(summary, eligibility, WindowRecords(db).window_fingerprint(window_id))
        closed = is_window_closed(
            window_id, outcomes_recorded=window_id in with_outcomes, now=db.clock(), grace_minutes=rules.grace_minutes
        )
        if not closed:
            context.log.warning(
                f"window {window_id} is not closed yet (no outcomes, grace period running): rows "
                "that arrive later change its fingerprint and call for another materialization"
            )
        examples = [(q.trajectory_id or q.row_id, q.reason, q.detail[:160]) for q in read.quarantined[:10]]
        return {
            "window_id": window_id,
            "rows": summary.rows,
            "agents": summary.agents,
            "eligible": summary.eligible_agents,
            "ready": summary.is_ready(eligibility),
            "closed": closed,
            "stitched_agent_windows": sum(1 for aw in read.eligible if len(aw.trajectories) > 1),
            "rows_accounted": summary.accounting,
            "used_rows": summary.used_rows,
            "excluded_rows": summary.excluded_rows,
            "excluded_total": sum(summary.excluded.values()),
            "quarantined_total": sum(summary.quarantined.values()),
            "excluded": lambda: counts_table(summary.excluded),
            "quarantined": lambda: counts_table(summary.quarantined),
            "quarantine_examples": lambda: metadata_table(["trajectory", "reason", "detail"], examples),
        }

    result = for_each_window(context, parse_window)
    assert result is not None  # every window yields its counts, even an empty one
    return result


@asset(partitions_def=WINDOW_PARTITIONS, backfill_policy=WINDOW_BACKFILL_POLICY, group_name="windows", kinds={"sql"})
def market_outcomes(context: AssetExecutionContext, store: StoreResource) -> MaterializeResult:
    """The window's ground truth: how each ticker moved and how each prediction market resolved."""
    db = store.get_store()
    verdicts: list[tuple[str, bool, str]] = []

    def read_outcomes(window_id: str) -> WindowMetadata:
        outcomes = db.window_outcomes(window_id)
        if not outcomes.recorded:
            context.log.warning(f"window {window_id} has no market outcomes: flagged; the judge will see none")
        verdicts.append(
            (
                window_id,
                outcomes.recorded,
                "outcomes recorded" if outcomes.recorded else f"window {window_id} has no market_outcomes rows",
            )
        )
        return {
            "window_id": window_id,
            "recorded": outcomes.recorded,
            "stocks": len(outcomes.stocks),
            "predictions": len(outcomes.predictions),
            "unrecognised_rows": outcomes.unrecognised_rows,
            "stock_moves": lambda: metadata_table(
                ["ticker", "start", "end", "change %", "sentiment", "news"],
                [
                    (s.ticker, s.start_price, s.end_price, s.change_percent, s.sentiment, "; ".join(map(str, s.news)))
                    for s in outcomes.stocks
                ],
            ),
            "prediction_markets": lambda: metadata_table(
                ["market", "question", "outcome", "last price"],
                [(p.market_id, p.question, p.outcome, p.final_probability) for p in outcomes.predictions],
            ),
        }

    result = for_each_window(
        context,
        read_outcomes,
        finish=lambda: WindowRecords(db).save_verdicts(OUTCOMES_CHECK, verdicts, context.run.run_id),
    )
    assert result is not None
    return result


@asset(
    partitions_def=WINDOW_PARTITIONS,
    backfill_policy=WINDOW_BACKFILL_POLICY,
    group_name="windows",
    deps=[trajectories],
    kinds={"sql"},
)
def window_groups(
    context: AssetExecutionContext, store: StoreResource, rules: WindowRulesResource
) -> MaterializeResult:
    """The window's GRPO groups after dropout (DESIGN 4); a window that is not ready keeps no group."""
    db = store.get_store()
    eligibility = rules.eligibility()
    verdicts: list[tuple[str, bool, str]] = []

    def cut_groups(window_id: str) -> WindowMetadata:
        read = db.read_window(window_id, eligibility)
        summary = read.summary()
        ready = summary.is_ready(eligibility)
        total = WindowRecords(db).eligible_in_lookback(window_id, rules.lookback_hours, eligibility)
        rate = dropout_rate(total, rules.target_trajectories, rules.max_dropout)
        by_id = {aw.agent_window_id: aw for aw in read.eligible}
        memberships = assign_groups(
            window_id, list(by_id), rate=rate, max_per_group=rules.max_per_group, ready=ready, seed=rules.dropout_seed
        )
        kept_scores = WindowRecords(db).replace_group_members(
            window_id,
            [
                {
                    "agent_window_id": m.agent_window_id,
                    "agent_id": by_id[m.agent_window_id].agent_id,
                    "trajectory_ids_json": json.dumps(by_id[m.agent_window_id].trajectory_ids),
                    "kept": m.kept,
                    "reason": m.reason,
                    "group_id": m.group_id,
                    "dropout_rate": rate,
                    "dropout_draw": m.draw,
                    "final_pnl": by_id[m.agent_window_id].final_pnl,
                }
                for m in memberships
            ],
        )
        shortfall = summary.shortfall(eligibility)
        verdicts.append((window_id, ready, shortfall or f"{summary.eligible_agents} eligible agents"))
        sizes: dict[str, int] = {}
        dropped: dict[str, int] = {}
        for m in memberships:
            if m.group_id is not None:
                sizes[m.group_id] = sizes.get(m.group_id, 0) + 1
            else:
                dropped[m.reason] = dropped.get(m.reason, 0) + 1
        if not ready:
            context.log.info(f"{shortfall}: no groups, so it is never judged or trained on")
        return {
            "window_id": window_id,
            "ready": ready,
            "why_not_ready": shortfall or "",
            "dropout_rate": MetadataValue.float(round(rate, 6)),
            "eligible_in_lookback": total,
            "kept": sum(1 for m in memberships if m.kept),
            "groups": len(sizes),
            "scores_kept": kept_scores,
            "dropped": lambda: counts_table(dropped),
            "group_sizes": lambda: metadata_table(["group", "size"], sorted(sizes.items())),
        }

    result = for_each_window(
        context, cut_groups, finish=lambda: WindowRecords(db).save_verdicts(READY_CHECK, verdicts, context.run.run_id)
    )
    assert result is not None
    return result
