"""Evaluation, the promotion gate and deployment: the held-out plan, the gate's thresholds, where policies
are served and where the deployed one is announced (DESIGN 7)."""

from __future__ import annotations

from pathlib import Path

from dagster import ConfigurableResource

from babylon_assets.promotion.deploy import DeployOptions
from babylon_assets.promotion.evaluation import EvaluationOptions, EvaluationPlan
from babylon_assets.settings import Settings, carried_fields, settings_of

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
    "EVAL_MAX_TOKENS",
    "EVAL_BOOTSTRAP_RESAMPLES",
    "GATE_MIN_PNL_DELTA",
    "GATE_MAX_UNPARSEABLE_RISE",
    "POLICY_API_BASE",
    "LOCAL_LLM_PORT",
    "SERVING_FILE",
    "GATEWAY_PORT",
)


class PromotionResource(ConfigurableResource):  # type: ignore[type-arg]
    """How a checkpoint is evaluated against its base, gated, and deployed."""

    base_model: str = "HuggingFaceTB/SmolLM2-135M-Instruct"
    model_name: str = "babylon-mmo"
    eval_seeds: str = "1001,1002"
    eval_windows: int = 2
    eval_agents: int = 8
    eval_duration_minutes: int = 10
    eval_start: str = "2024-12-01T00:00"
    eval_temperature: float = 0.0
    eval_max_tokens: int = 160
    eval_bootstrap_resamples: int = 10_000
    gate_min_pnl_delta: float = 0.0
    gate_max_unparseable_rise: float = 0.0
    policy_api_base: str | None = None
    local_llm_port: int = 8080
    serving_file: str = ".babylon/serving.json"
    gateway_port: int = 8787

    @classmethod
    def from_settings(cls, settings: Settings) -> PromotionResource:
        """The resource for these settings."""
        return cls(**carried_fields(settings, PROMOTION_SETTINGS))

    def settings(self) -> Settings:
        """The settings this resource carries, validated as the environment's would be."""
        return settings_of(self, PROMOTION_SETTINGS)

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
