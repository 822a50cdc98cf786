"""Jobs over the asset graph: one window's assets, the training dataset, training, and promotion."""

from __future__ import annotations

from dagster import AssetSelection, define_asset_job

from babylon_assets.assets.checkpoints import trained_checkpoint
from babylon_assets.assets.datasets import training_dataset
from babylon_assets.assets.promotion import checkpoint_evaluation, deployed_model
from babylon_assets.assets.rollouts import policy_rollouts
from babylon_assets.assets.scores import ruler_scores
from babylon_assets.assets.windows import market_outcomes, trajectories, window_groups
from babylon_assets.core.run_queues import QUEUE_OF_JOB, QUEUE_TAG


def _queue_tags(job_name: str) -> dict[str, str]:
    """The worker queue of the job's runs, on the run from its creation (so the run queue's per-queue limits see
    it); only the Celery run launcher acts on it."""
    return {QUEUE_TAG: QUEUE_OF_JOB[job_name]}


window_graph_job = define_asset_job(
    "window_graph",
    tags=_queue_tags("window_graph"),
    selection=AssetSelection.assets(trajectories, market_outcomes, window_groups, ruler_scores),
    description="Parse, group and judge one window (or a range of windows).",
)

training_dataset_job = define_asset_job(
    "training_dataset_job",
    tags=_queue_tags("training_dataset_job"),
    selection=AssetSelection.assets(training_dataset),
    description="Assemble the training dataset from the scores already stored (never re-scores).",
)

training_job = define_asset_job(
    "training_job",
    tags=_queue_tags("training_job"),
    selection=AssetSelection.assets(training_dataset, trained_checkpoint),
    description="Assemble the training dataset from stored scores, then train a checkpoint on it.",
)

promotion_job = define_asset_job(
    "promotion_job",
    tags=_queue_tags("promotion_job"),
    selection=AssetSelection.assets(checkpoint_evaluation, deployed_model),
    description="Evaluate the newest checkpoint against its base (paired, held out); the blocking gate lets "
    "only a passing one be deployed.",
)

rollouts_job = define_asset_job(
    "rollouts_job",
    tags=_queue_tags("rollouts_job"),
    selection=AssetSelection.assets(policy_rollouts),
    description="The rollout policy (the newest checkpoint) plays every seat of a training hour (on-policy play).",
)
