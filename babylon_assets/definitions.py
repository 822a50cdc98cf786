"""The one Definitions object of the `babylon_assets` code location."""

from __future__ import annotations

from dagster import Definitions

from babylon_assets.assets.checkpoints import trained_checkpoint
from babylon_assets.assets.datasets import training_dataset
from babylon_assets.assets.promotion import checkpoint_evaluation, deployed_model
from babylon_assets.assets.scores import ruler_scores
from babylon_assets.assets.windows import market_outcomes, trajectories, window_groups
from babylon_assets.checks import ALL_CHECKS
from babylon_assets.jobs import promotion_job, training_dataset_job, training_job, window_graph_job
from babylon_assets.resources.judge import JudgeResource
from babylon_assets.resources.promotion import PromotionResource
from babylon_assets.resources.rules import WindowRulesResource
from babylon_assets.resources.store import StoreResource
from babylon_assets.resources.trainer import TrainerResource
from babylon_assets.sensors import promotion_sensor, training_sensor, window_sensor
from babylon_assets.settings import Settings, get_settings


def build_resources(settings: Settings) -> dict[str, object]:
    """Resources chosen from the environment's settings (the one place they are chosen)."""
    return {
        "store": StoreResource(
            database_url=settings.DATABASE_URL,
            game_read_only=settings.GAME_READ_ONLY,
            max_trajectory_chars=settings.MAX_TRAJECTORY_CHARS,
            future_tolerance_minutes=settings.FUTURE_TOLERANCE_MINUTES,
        ),
        "rules": WindowRulesResource(
            min_agents=settings.MIN_AGENTS,
            min_actions=settings.MIN_ACTIONS,
            min_ready_windows=settings.MIN_READY_WINDOWS,
            max_per_group=settings.MAX_PER_GROUP,
            target_trajectories=settings.TARGET_TRAJECTORIES,
            max_dropout=settings.MAX_DROPOUT,
            lookback_hours=settings.LOOKBACK_HOURS,
            grace_minutes=settings.GRACE_MINUTES,
        ),
        "judge": JudgeResource(
            judge_model=settings.JUDGE_MODEL,
            api_base=settings.JUDGE_API_BASE,
            api_key=settings.JUDGE_API_KEY,
            max_concurrency=settings.JUDGE_MAX_CONCURRENCY,
            retries=settings.JUDGE_RETRIES,
            budget_usd=settings.JUDGE_BUDGET_USD,
            budget_tokens=settings.JUDGE_BUDGET_TOKENS,
            rubric_version=settings.RUBRIC_VERSION,
            mode=settings.JUDGE_MODE,
            timeout_s=settings.JUDGE_TIMEOUT_SECONDS,
        ),
        "trainer": TrainerResource.from_settings(settings),
        "promotion": PromotionResource.from_settings(settings),
    }


def build_definitions(
    settings: Settings | None = None, resource_overrides: dict[str, object] | None = None
) -> Definitions:
    """The code location: window assets, the dataset, checks, jobs, sensors and resources."""
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
        ],
        asset_checks=ALL_CHECKS,
        jobs=[window_graph_job, training_dataset_job, training_job, promotion_job],
        sensors=[window_sensor, training_sensor, promotion_sensor],
        resources={**build_resources(settings or get_settings()), **(resource_overrides or {})},
    )


defs = build_definitions()
