"""Evaluation, the promotion gate and deployment: the held-out plan, the gate's thresholds, where policies
are served and where the deployed one is announced (DESIGN 7)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from dagster import ConfigurableResource

from babylon_assets.promotion.deploy import DeployOptions
from babylon_assets.promotion.evaluation import EvaluationOptions, EvaluationPlan
from babylon_assets.settings import BuiltFromSettings, lower_case_fields

# Every setting evaluation and deployment read; carried as the lower-case field of the same name.
PROMOTION_SETTINGS = (
    "BASE_MODEL",
    "MODEL_NAME",
    "EVAL_SEEDS",
    "EVAL_WINDOWS",
    "EVAL_AGENTS",
    "EVAL_DURATION_MINUTES",
    "EVAL_START",
    "EVAL_TEMPERATURE",
    "EVAL_COMMON_RANDOM_NUMBERS",
    "EVAL_MAX_TOKENS",
    "EVAL_BOOTSTRAP_RESAMPLES",
    "GATE_MIN_PNL_DELTA",
    "GATE_MAX_UNPARSEABLE_RISE",
    "POLICY_API_BASE",
    "LOCAL_LLM_PORT",
    "SERVING_FILE",
    "GATEWAY_PORT",
)


class PromotionResource(BuiltFromSettings, ConfigurableResource):  # type: ignore[misc,type-arg]
    """How a checkpoint is evaluated against its base, gated, and deployed."""

    base_model: str
    model_name: str
    eval_seeds: str
    eval_windows: int
    eval_agents: int
    eval_duration_minutes: int
    eval_start: str
    eval_temperature: float
    eval_common_random_numbers: bool
    eval_max_tokens: int
    eval_bootstrap_resamples: int
    gate_min_pnl_delta: float
    gate_max_unparseable_rise: float
    policy_api_base: str | None
    local_llm_port: int
    serving_file: str
    gateway_port: int

    SETTING_FIELDS: ClassVar[dict[str, str]] = lower_case_fields(*PROMOTION_SETTINGS)

    def evaluation_options(self) -> EvaluationOptions:
        """The evaluation plan and how it is judged against the gate."""
        settings = self.settings()
        return EvaluationOptions(
            plan=EvaluationPlan.from_settings(settings),
            base_model=self.base_model,
            min_pnl_delta=self.gate_min_pnl_delta,
            max_unparseable_rise=self.gate_max_unparseable_rise,
            resamples=self.eval_bootstrap_resamples,
            policy_api_base=self.policy_api_base,
            work_folder=Path(self.serving_file).parent / "eval",
        )

    def deploy_options(self) -> DeployOptions:
        """Where the deployed model is served and announced."""
        return DeployOptions.from_settings(self.settings())
