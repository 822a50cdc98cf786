"""Promotion: the newest checkpoint played against its base on held-out markets (paired), the blocking
gate (checks.promotion_gate) in front of deployment, and the deployed model."""

import base64

from dagster import AssetExecutionContext, AssetKey, DagsterInstance, Failure, MaterializeResult, MetadataValue, asset

from babylon_assets.core.paired_stats import pnl_distributions_svg
from babylon_assets.core.window_time import utcnow
from babylon_assets.db.evaluation_records import EvaluationRecords
from babylon_assets.db.window_records import WindowRecords
from babylon_assets.promotion.deploy import DeployError, deploy_model
from babylon_assets.promotion.evaluation import evaluate_checkpoint
from babylon_assets.resources.judge import JudgeResource
from babylon_assets.resources.promotion import PromotionResource
from babylon_assets.resources.store import StoreResource
from babylon_assets.resources.trainer import TrainerResource

from .checkpoints import trained_checkpoint
from .presentation import metadata_table


def _bound(value: float | None) -> float:
    return float("nan") if value is None else float(value)


@asset(group_name="promotion", deps=[trained_checkpoint], kinds={"llama.cpp"})
def checkpoint_evaluation(
    context: AssetExecutionContext,
    store: StoreResource,
    judge: JudgeResource,
    promotion: PromotionResource,
    trainer: TrainerResource,
) -> MaterializeResult:
    """The newest checkpoint and its base model, each played by the simulator's LLM agents through the
    gateway on the same held-out markets (isEvaluation, never trained on): per-policy P&L, win rate,
    drawdown, unparseable responses and judge score, and the paired P&L difference with a bootstrap 95%
    interval. Results go to trained_models.evalMetrics / benchmarkScore and the checkpoint's W&B run."""
    db = store.get_store()
    model = EvaluationRecords(db).newest_checkpoint(promotion.model_name)
    if model is None:
        raise Failure(f"no checkpoint of {promotion.model_name} yet: materialize trained_checkpoint first")
    options = promotion.evaluation_options()
    context.log.info(
        f"evaluating {model.modelId} against {options.base_model} on "
        f"{options.plan.agent_windows} paired agent-windows (plan {options.plan.key[:8]})"
    )
    outcome = evaluate_checkpoint(
        db,
        options,
        judge.get_judge(cache=WindowRecords(db)),
        model,
        now=utcnow(),
        on_market=lambda policy, seed, plays: context.log.info(f"{policy}: seed {seed} played ({plays} plays)"),
    )
    report = outcome.report
    tracker = trainer.tracker()
    if tracker is not None:
        tracker.start(f"eval-{outcome.model_version}", {}, run_id=model.wandbRunId or None)
        tracker.summarize(
            {
                f"eval/{k}": v
                for k, v in {
                    "paired_pnl_mean": report.paired.mean,
                    "paired_pnl_low": _bound(report.paired.low),
                    "paired_pnl_high": _bound(report.paired.high),
                    "pairs": report.paired.pairs,
                    "base_mean_pnl": report.base.mean_pnl,
                    "checkpoint_mean_pnl": report.candidate.mean_pnl,
                    "base_unparseable_rate": report.base.unparseable_rate,
                    "checkpoint_unparseable_rate": report.candidate.unparseable_rate,
                    "gate_passed": report.verdict.passed,
                }.items()
            }
        )
        tracker.finish()
    rows = []
    for label, metrics in (("base", report.base), ("checkpoint", report.candidate)):
        judged = None if metrics.mean_judge_score is None else round(metrics.mean_judge_score, 3)
        rows.append(
            (
                label,
                metrics.agent_windows,
                round(metrics.mean_pnl, 2),
                round(metrics.win_rate, 4),
                round(metrics.mean_max_drawdown, 2),
                round(metrics.unparseable_rate, 4),
                judged,
            )
        )
    svg = pnl_distributions_svg(
        [p.final_pnl for p in outcome.base.plays],
        [p.final_pnl for p in outcome.candidate.plays],
        labels=(outcome.report.base_policy, outcome.model_version),
    )
    picture = base64.b64encode(svg.encode()).decode()
    return MaterializeResult(
        metadata={
            "model_version": outcome.model_version,
            "base_policy": report.base_policy,
            "plan_key": options.plan.key,
            "pairs": report.paired.pairs,
            "paired_pnl_mean": report.paired.mean,
            "paired_pnl_low": _bound(report.paired.low),
            "paired_pnl_high": _bound(report.paired.high),
            "gate": report.verdict.describe(),
            "policies": metadata_table(
                ["policy", "agent-windows", "mean P&L", "win rate", "mean max drawdown", "unparseable", "judge score"],
                rows,
            ),
            "pnl_distributions": MetadataValue.md(f"![P&L per agent-window](data:image/svg+xml;base64,{picture})"),
            "markets_reused": MetadataValue.json(
                {"base": outcome.base.reused_markets, "checkpoint": outcome.candidate.reused_markets}
            ),
            "judge": outcome.judge_version,
        }
    )


def evaluated_version(instance: DagsterInstance, key: AssetKey) -> str:
    """The model version the newest checkpoint_evaluation materialization evaluated."""
    event = instance.get_latest_materialization_event(key)
    materialization = event.asset_materialization if event is not None else None
    if materialization is None or "model_version" not in materialization.metadata:
        raise Failure("no evaluation yet: materialize checkpoint_evaluation first")
    return str(materialization.metadata["model_version"].value)


@asset(group_name="promotion", deps=[checkpoint_evaluation], kinds={"llama.cpp"})
def deployed_model(
    context: AssetExecutionContext, store: StoreResource, promotion: PromotionResource
) -> MaterializeResult:
    """The evaluated checkpoint, once the gate made it `ready`: served (the local llama.cpp server restarted
    with its adapter, or POLICY_API_BASE), `deployed` in trained_models (the previous one `archived`), and
    named in the serving file, so every agent's next call through the gateway goes to it."""
    version = evaluated_version(context.instance, checkpoint_evaluation.key)
    options = promotion.deploy_options()
    try:
        deployment = deploy_model(store.get_store(), options, version)
    except DeployError as error:
        raise Failure(str(error)) from None
    context.log.info(
        f"deployed {deployment.model_id} at {deployment.upstream.api_base} (previous: {deployment.previous or 'none'})"
    )
    return MaterializeResult(
        metadata={
            "model_version": deployment.model_id,
            "previous": deployment.previous or "",
            "upstream": deployment.upstream.model,
            "api_base": deployment.upstream.api_base or "",
            "serving_file": MetadataValue.path(deployment.serving_file),
            "adapter_gguf": deployment.adapter_gguf or "",
            "agent_settings": MetadataValue.json(deployment.agent_settings(options.gateway_port)),
        }
    )
