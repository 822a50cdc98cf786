"""The judge behind the judge interface (DESIGN 6), chosen by JUDGE_MODEL."""

from __future__ import annotations

from dagster import ConfigurableResource

from babylon_assets.core.judging import Judge, OutcomeJudge


class JudgeNotAvailable(RuntimeError):
    """A judge was configured that this version cannot run."""


class JudgeResource(ConfigurableResource):
    """`outcome` (deterministic, not an LLM) without JUDGE_MODEL; RULER when JUDGE_MODEL is set."""

    judge_model: str | None = None

    def get_judge(self) -> Judge:
        """The configured judge; never a silent fallback to another one."""
        if self.judge_model:
            raise JudgeNotAvailable(
                f"JUDGE_MODEL={self.judge_model!r} asks for the RULER judge, which this version does not have yet; "
                "unset JUDGE_MODEL to use the outcome judge"
            )
        return OutcomeJudge()
