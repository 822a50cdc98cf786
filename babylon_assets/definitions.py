"""The one Definitions object of the `babylon_assets` code location."""

from __future__ import annotations

from dagster import Definitions, in_process_executor

from babylon_assets.assets.checkpoints import trained_checkpoint
from babylon_assets.assets.datasets import training_dataset
from babylon_assets.assets.promotion import checkpoint_evaluation, deployed_model
from babylon_assets.assets.rollouts import policy_rollouts
from babylon_assets.assets.scores import ruler_scores
from babylon_assets.assets.windows import market_outcomes, trajectories, window_groups
from babylon_assets.checks import ALL_CHECKS
from babylon_assets.jobs import promotion_job, rollouts_job, training_dataset_job, training_job, window_graph_job
from babylon_assets.resources.judge import JudgeResource
from babylon_assets.resources.promotion import PromotionResource
from babylon_assets.resources.rollouts import RolloutResource
from babylon_assets.resources.rules import WindowRulesResource
from babylon_assets.resources.store import StoreResource
from babylon_assets.resources.trainer import TrainerResource
from babylon_assets.sensors import promotion_sensor, rollout_sensor, training_sensor, window_sensor
from babylon_assets.settings import BuiltFromSettings, Settings, get_settings

RESOURCES: dict[str, type[BuiltFromSettings]] = {
    "store": StoreResource,
    "rules": WindowRulesResource,
    "judge": JudgeResource,
    "trainer": TrainerResource,
    "promotion": PromotionResource,
    "rollouts": RolloutResource,
}


def build_resources(settings: Settings) -> dict[str, object]:
    """Every resource built from the environment's settings: the one place they are chosen."""
    return {name: resource.from_settings(settings) for name, resource in RESOURCES.items()}


def build_definitions(
    settings: Settings | None = None, resource_overrides: dict[str, object] | None = None
) -> Definitions:
    """The code location: window assets, the dataset, checks, jobs, sensors and resources."""
    settings = settings or get_settings()
    return Definitions(
        assets=[
            trajectories,
            market_outcomes,
            window_groups,
            ruler_scores,
            training_dataset,
            trained_checkpoint,
            checkpoint_evaluation,
            deployed_model,
            policy_rollouts,
        ],
        asset_checks=ALL_CHECKS,
        jobs=[window_graph_job, training_dataset_job, training_job, promotion_job, rollouts_job],
        sensors=[window_sensor, training_sensor, promotion_sensor, rollout_sensor],
        resources={**build_resources(settings), **(resource_overrides or {})},
        # On Celery workers each run executes in the worker's own process: a killed worker then takes its run's steps
        # with it (a step in a subprocess of its own would go on training, orphaned, beside the run's retry).
        executor=in_process_executor if settings.CELERY_BROKER_URL else None,
    )


defs = build_definitions()
