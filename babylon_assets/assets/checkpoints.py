"""The trained checkpoint: GRPO steps on the newest training dataset through ART's backend protocol."""

from dagster import AssetExecutionContext, AssetObservation, MaterializeResult, MetadataValue, asset

from babylon_assets.orchestration.instance import TRAINING_POOL
from babylon_assets.resources.store import StoreResource
from babylon_assets.resources.trainer import TrainerResource
from babylon_assets.training.run import StepReport, run_training

from .datasets import training_dataset
from .presentation import metadata_table


@asset(group_name="training", deps=[training_dataset], kinds={"pytorch"}, pool=TRAINING_POOL)
def trained_checkpoint(
    context: AssetExecutionContext, store: StoreResource, trainer: TrainerResource
) -> MaterializeResult:
    """A LoRA checkpoint trained with GRPO on the newest training dataset (status `trained`, not yet gated)."""
    db = store.get_store()

    def progress(report: StepReport) -> None:
        loss = report.metrics.get("loss", 0.0)
        context.log.info(
            f"step {report.step} (iteration {report.iteration}): loss {loss:.4f}, "
            f"{report.groups} groups, {report.trajectories} agent-windows, "
            f"{report.metrics.get('tokens_per_second', 0):.0f} tokens/s"
        )
        # One observation per step: the asset's Plots tab draws loss and reward over steps, and the promotion
        # sensor, which fires on materializations, never sees them.
        context.log_event(
            AssetObservation(
                asset_key=context.asset_key,
                metadata={
                    "step": report.step,
                    "loss": float(loss),
                    "reward_mean": float(report.metrics.get("reward_mean", 0.0)),
                    "reward_std": float(report.metrics.get("reward_std", 0.0)),
                    "groups": report.groups,
                    "agent_windows": report.trajectories,
                },
            )
        )

    outcome = run_training(
        db,
        trainer.backend(db),
        trainer.options(),
        tracker=trainer.tracker(),
        batch_id=f"batch-{context.run.run_id}",
        on_step=progress,
    )
    rows = [
        (
            r.step,
            round(float(r.metrics.get("loss", 0.0)), 4),
            round(float(r.metrics.get("reward_mean", 0.0)), 3),
            int(r.metrics.get("groups_used", 0)),
            int(r.metrics.get("groups_skipped_zero_variance", 0)),
            round(float(r.metrics.get("tokens_per_second", 0.0))),
            round(float(r.metrics.get("seconds", 0.0)), 1),
        )
        for r in outcome.steps
    ]
    return MaterializeResult(
        metadata={
            "model_version": outcome.model_version or "",
            "checkpoint_path": MetadataValue.path(outcome.checkpoint_path or ""),
            "batch_id": outcome.batch_id,
            "dataset_id": outcome.dataset_id,
            "steps": len(outcome.steps),
            "windows": len(outcome.windows),
            "trajectories": len(outcome.trajectory_ids),
            "reward_mean": outcome.rewards.mean,
            "pnl_mean": outcome.pnl.mean,
            "wandb_run_id": outcome.wandb_run_id or "",
            "wandb_dir": outcome.wandb_dir or "",
            "per_step": metadata_table(
                ["step", "loss", "reward mean", "groups used", "groups skipped", "tokens/s", "seconds"], rows
            ),
        }
    )
