"""On-policy rollouts (issue 20): the rollout policy plays every seat of a training hour, recorded through the gateway
with its sampled tokens. Not part of `window_graph`: the window graph then scores the hour like any other."""

# Dagster reads the context's annotation at definition time, so annotations stay real (no __future__).
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    BackfillPolicy,
    MaterializeResult,
    MetadataValue,
    asset,
)

from babylon_assets.core.policy_guards import MAX_ACTION_SHARE
from babylon_assets.partitions import WINDOW_PARTITIONS
from babylon_assets.play.rollouts import RolloutServer, play_rollout_window
from babylon_assets.resources.rollouts import RolloutResource
from babylon_assets.resources.store import StoreResource

COLLAPSE_CHECK = "rollouts_not_collapsed"


@asset(
    partitions_def=WINDOW_PARTITIONS,
    # One hour a run: the server may switch versions between runs, never within a window.
    backfill_policy=BackfillPolicy.multi_run(1),
    group_name="learning",
    kinds={"llama.cpp"},
    pool="rollouts",
    check_specs=[
        AssetCheckSpec(
            COLLAPSE_CHECK,
            asset="policy_rollouts",
            description=f"Warns when one action is over {MAX_ACTION_SHARE:.0%} of the hour's decisions or its seats "
            "made no trade (a collapsing policy).",
        )
    ],
)
def policy_rollouts(
    context: AssetExecutionContext, store: StoreResource, rollouts: RolloutResource
) -> MaterializeResult:
    """The rollout policy (the newest checkpoint; the base before the first) plays every seat of this hour, constrained
    by the decision schema, through the gateway: each answer recorded with its token ids, logprobs and version."""
    db = store.get_store()
    plan = rollouts.plan()
    server = RolloutServer(plan)
    played = play_rollout_window(db, plan, context.partition_key, server, now=db.now_utc())
    behaviour = played.behaviour
    context.log.info(
        f"{played.window_id}: {played.version} played {played.agent_windows} seats, {played.decisions} decisions "
        f"({played.unparseable} unparseable) in {played.seconds:.0f} s"
        + ("" if played.replayed else " (already played: kept)")
    )
    metadata: dict[str, Any] = {
        "policy_version": played.version,
        "agent_windows": played.agent_windows,
        "decisions": played.decisions,
        "unparseable": played.unparseable,
        "played_now": played.replayed,
        "server_switched": server.switches > 0,
        "seconds": MetadataValue.float(round(played.seconds, 1)),
        **{name: MetadataValue.float(round(value, 4)) for name, value in behaviour.as_metrics().items()},
        "warnings": "; ".join(behaviour.warnings()) or "none",
    }
    warnings = behaviour.warnings()
    check = AssetCheckResult(
        check_name=COLLAPSE_CHECK,
        passed=not (played.replayed and warnings),
        severity=AssetCheckSeverity.WARN,
        metadata={
            "top_action": behaviour.top_action[0],
            "top_action_share": MetadataValue.float(round(behaviour.top_action[1], 4)),
            "trades_per_agent_window": MetadataValue.float(round(behaviour.trades_per_agent_window, 4)),
        },
        description="; ".join(warnings) or None,
    )
    return MaterializeResult(metadata=metadata, check_results=[check])
