"""The thresholds of windows, dropout and groups (DESIGN 3, 4) as a resource."""

from __future__ import annotations

from typing import ClassVar

from dagster import ConfigurableResource

from babylon_assets.core.eligibility import EligibilityRules
from babylon_assets.settings import BuiltFromSettings, lower_case_fields


class WindowRulesResource(BuiltFromSettings, ConfigurableResource):  # type: ignore[misc]
    """MIN_AGENTS, MIN_ACTIONS, MAX_PER_GROUP, TARGET_TRAJECTORIES, MAX_DROPOUT, LOOKBACK_HOURS, ..."""

    SETTING_FIELDS: ClassVar[dict[str, str]] = lower_case_fields(
        "MIN_AGENTS",
        "MIN_ACTIONS",
        "MIN_READY_WINDOWS",
        "MAX_PER_GROUP",
        "TARGET_TRAJECTORIES",
        "MAX_DROPOUT",
        "LOOKBACK_HOURS",
        "GRACE_MINUTES",
        "DROPOUT_SEED",
    )

    min_agents: int
    min_actions: int
    min_ready_windows: int
    max_per_group: int
    target_trajectories: int
    max_dropout: float
    lookback_hours: int
    grace_minutes: int
    dropout_seed: str

    def eligibility(self) -> EligibilityRules:
        """The eligibility and readiness rule."""
        return EligibilityRules(self.min_actions, self.min_agents, self.min_ready_windows)
