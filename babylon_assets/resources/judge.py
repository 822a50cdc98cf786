"""The judge behind the judge interface (DESIGN 6), chosen by JUDGE_MODEL: never a silent fallback."""

from __future__ import annotations

from typing import ClassVar

from dagster import ConfigurableResource

from babylon_assets.core.judging import Judge, MixedJudge, OutcomeJudge
from babylon_assets.judges.ruler import JudgeCache, RulerConfig, RulerJudge
from babylon_assets.settings import BuiltFromSettings


class JudgeResource(BuiltFromSettings, ConfigurableResource):  # type: ignore[misc]
    """`outcome` (deterministic, not an LLM) without JUDGE_MODEL; `ruler` (ART's RULER via litellm) with it; the
    outcome judge with RULER mixed in at RULER_WEIGHT when that is set."""

    SETTING_FIELDS: ClassVar[dict[str, str]] = {
        "judge_model": "JUDGE_MODEL",
        "api_base": "JUDGE_API_BASE",
        "api_key": "JUDGE_API_KEY",
        "max_concurrency": "JUDGE_MAX_CONCURRENCY",
        "retries": "JUDGE_RETRIES",
        "budget_usd": "JUDGE_BUDGET_USD",
        "budget_tokens": "JUDGE_BUDGET_TOKENS",
        "rubric_version": "RUBRIC_VERSION",
        "mode": "JUDGE_MODE",
        "timeout_s": "JUDGE_TIMEOUT_SECONDS",
        "backoff_s": "JUDGE_BACKOFF_SECONDS",
        "ruler_weight": "RULER_WEIGHT",
    }

    judge_model: str | None
    api_base: str | None
    api_key: str | None
    max_concurrency: int
    retries: int
    budget_usd: float | None
    budget_tokens: int | None
    rubric_version: str
    mode: str
    timeout_s: float
    backoff_s: float
    ruler_weight: float | None

    def ruler_config(self) -> RulerConfig:
        """RULER's configuration, taken field by field from this resource."""
        if not self.judge_model:
            raise ValueError("the ruler judge needs JUDGE_MODEL")
        if self.mode not in ("art", "pinned"):
            raise ValueError(f"JUDGE_MODE={self.mode!r}: use art or pinned")
        return RulerConfig(
            model=self.judge_model,
            api_base=self.api_base,
            api_key=self.api_key,
            max_concurrency=self.max_concurrency,
            retries=self.retries,
            budget_usd=self.budget_usd,
            budget_tokens=self.budget_tokens,
            rubric_version=self.rubric_version,
            mode=self.mode,  # type: ignore[arg-type]
            timeout_s=self.timeout_s,
            backoff_s=self.backoff_s,
        )

    def get_judge(self, cache: JudgeCache | None = None) -> Judge:
        """The configured judge, with the store as RULER's cache."""
        if self.ruler_weight is not None and self.ruler_weight > 0 and not self.judge_model:
            raise ValueError(f"RULER_WEIGHT={self.ruler_weight:g} mixes RULER in: set JUDGE_MODEL too")
        if not self.judge_model or self.ruler_weight == 0:
            return OutcomeJudge()
        ruler = RulerJudge(self.ruler_config(), cache=cache)
        if self.ruler_weight is None:
            return ruler
        return MixedJudge(OutcomeJudge(), ruler, self.ruler_weight)
