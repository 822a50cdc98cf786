"""The rollout policy's play (issue 20): which hours, how many seats and decisions, how sampled, and where served."""

from __future__ import annotations

from typing import ClassVar

from dagster import ConfigurableResource

from babylon_assets.play.rollouts import RolloutPlan
from babylon_assets.settings import BuiltFromSettings, lower_case_fields

ROLLOUT_SETTINGS = (
    "ROLLOUT_START",
    "ROLLOUT_SEED",
    "ROLLOUT_AGENTS",
    "ROLLOUT_DECISIONS",
    "ROLLOUT_TEMPERATURE",
    "ROLLOUT_PARALLEL",
    "ROLLOUT_SERVER_PORT",
    "ROLLOUT_SERVER_FOLDER",
    "MODEL_NAME",
    "BASE_MODEL",
    "MIN_ACTIONS",
)


class RolloutResource(BuiltFromSettings, ConfigurableResource):  # type: ignore[misc]
    """ROLLOUT_* settings, and the model whose newest checkpoint plays."""

    SETTING_FIELDS: ClassVar[dict[str, str]] = lower_case_fields(*ROLLOUT_SETTINGS)

    rollout_start: str
    rollout_seed: int
    rollout_agents: int
    rollout_decisions: int
    rollout_temperature: float
    rollout_parallel: int
    rollout_server_port: int
    rollout_server_folder: str
    model_name: str
    base_model: str
    min_actions: int

    def plan(self) -> RolloutPlan:
        """The rollout plan; refused when its seats could not meet MIN_ACTIONS (their play would never be a group)."""
        if self.rollout_decisions < self.min_actions:
            raise ValueError(
                f"ROLLOUT_DECISIONS={self.rollout_decisions} is below MIN_ACTIONS={self.min_actions}: no rollout seat "
                "would be eligible for a group; raise ROLLOUT_DECISIONS or lower MIN_ACTIONS"
            )
        return RolloutPlan.from_settings(self.settings())
