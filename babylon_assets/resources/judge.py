"""The judge behind the judge interface (DESIGN 6), chosen by JUDGE_MODEL: never a silent fallback."""

from __future__ import annotations

from dagster import ConfigurableResource

from babylon_assets.core.judging import Judge, OutcomeJudge
from babylon_assets.judges.ruler import JudgeCache, RulerConfig, RulerJudge


class JudgeResource(ConfigurableResource):
    """`outcome` (deterministic, not an LLM) without JUDGE_MODEL; `ruler` (ART's RULER via litellm) with it."""

    judge_model: str | None = None
    api_base: str | None = None
    api_key: str | None = None
    max_concurrency: int = 4
    retries: int = 3
    budget_usd: float | None = None
    budget_tokens: int | None = None
    rubric_version: str = "trading-v1"
    mode: str = "art"
    timeout_s: float = 120.0
    backoff_s: float = 1.0

    def get_judge(self, cache: JudgeCache | None = None) -> Judge:
        """The configured judge, with the store as RULER's cache."""
        if not self.judge_model:
            return OutcomeJudge()
        if self.mode not in ("art", "pinned"):
            raise ValueError(f"JUDGE_MODE={self.mode!r}: use art or pinned")
        return RulerJudge(
            RulerConfig(
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
            ),
            cache=cache,
        )
