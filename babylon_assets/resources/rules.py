"""The thresholds of windows, dropout and groups (DESIGN 3, 4) as a resource."""

from __future__ import annotations

from dagster import ConfigurableResource

from babylon_assets.core.dropout import DEFAULT_DROPOUT_SEED
from babylon_assets.core.eligibility import EligibilityRules


class WindowRulesResource(ConfigurableResource):
    """MIN_AGENTS, MIN_ACTIONS, MAX_PER_GROUP, TARGET_TRAJECTORIES, MAX_DROPOUT, LOOKBACK_HOURS, ..."""

    min_agents: int = 5
    min_actions: int = 5
    min_ready_windows: int = 3
    max_per_group: int = 8
    target_trajectories: int = 1000
    max_dropout: float = 0.3
    lookback_hours: int = 168
    grace_minutes: int = 15
    dropout_seed: str = DEFAULT_DROPOUT_SEED

    def eligibility(self) -> EligibilityRules:
        """The eligibility and readiness rule."""
        return EligibilityRules(self.min_actions, self.min_agents, self.min_ready_windows)
