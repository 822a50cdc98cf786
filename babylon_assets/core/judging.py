"""The judge interface (DESIGN 6) and the `outcome` judge: a deterministic reward from the ground truth,
not an LLM. No Dagster here.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from babylon_assets.core.eligibility import AgentWindow
from babylon_assets.core.outcomes import WindowOutcomes


@dataclass(frozen=True, slots=True)
class JudgeGroup:
    """A group to judge: agent-windows of one window, and that window's ground truth."""

    group_id: str
    window_id: str
    members: list[AgentWindow]
    outcomes: WindowOutcomes


@dataclass(frozen=True, slots=True)
class Judgment:
    """A score in [0, 1] and the judge's reasoning."""

    score: float
    reasoning: str


@dataclass(frozen=True, slots=True)
class CachedJudgment:
    """A group's remembered judgment: each member's (score, reasoning) and what the call that made it cost."""

    scores: dict[str, tuple[float, str]]
    tokens_in: int
    tokens_out: int
    dollars: float


@dataclass(slots=True)
class JudgeUsage:
    """What judging cost."""

    calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    dollars: float = 0.0


@dataclass(slots=True)
class JudgeResult:
    """Scores by agent-window id (never by position), the usage, and the groups that could not be judged."""

    scores: dict[str, Judgment]
    usage: JudgeUsage = field(default_factory=JudgeUsage)
    failures: dict[str, str] = field(default_factory=dict)  # group id -> why
    usage_by_window: dict[str, JudgeUsage] = field(default_factory=dict)


class Judge(Protocol):
    """Scores groups of agent-windows; `version` names the model and the rubric."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def is_llm(self) -> bool: ...

    async def score(self, groups: Sequence[JudgeGroup]) -> JudgeResult: ...


class InvalidJudgment(ValueError):
    """A judge's answer that cannot be stored: a missing or unknown id, or a score outside [0, 1]."""


def validate_result(groups: Sequence[JudgeGroup], result: JudgeResult) -> None:
    """Exactly one score per member of every group that did not fail, known ids only, each in [0, 1]."""
    expected = {aw.agent_window_id for group in groups if group.group_id not in result.failures for aw in group.members}
    missing = sorted(expected - set(result.scores))
    unknown = sorted(set(result.scores) - expected)
    if missing or unknown:
        raise InvalidJudgment(
            f"judge returned scores for {len(unknown)} unknown id(s) {unknown[:5]} and none for "
            f"{len(missing)} id(s) {missing[:5]}"
        )
    bad = {k: j.score for k, j in result.scores.items() if not (math.isfinite(j.score) and 0.0 <= j.score <= 1.0)}
    if bad:
        raise InvalidJudgment(f"scores outside [0, 1]: {bad}")


# -- statistics ------------------------------------------------------------------------------------


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation; None when undefined (fewer than 2 points or a constant side)."""
    if len(x) != len(y) or len(x) < 2:
        return None
    rx, ry = average_ranks(x), average_ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx = sum((a - mx) ** 2 for a in rx)
    vy = sum((b - my) ** 2 for b in ry)
    if vx == 0 or vy == 0:
        return None
    return cov / math.sqrt(vx * vy)


# -- the outcome judge ----------------------------------------------------------------------------

_LONG_WORDS = ("LONG", "BUY", "YES")
_SHORT_WORDS = ("SHORT", "SELL", "NO")


def _direction(action_type: str) -> int:
    upper = action_type.upper()
    if upper in ("HOLD", "CLOSE", "WAIT"):
        return 0
    if any(word in upper for word in _SHORT_WORDS):
        return -1
    if any(word in upper for word in _LONG_WORDS):
        return 1
    return 0


def _target(parameters: dict[str, object]) -> tuple[str, str] | None:
    for key in ("ticker", "stockTicker", "symbol"):
        if isinstance(parameters.get(key), str):
            return "stock", str(parameters[key])
    for key in ("marketId", "predictionMarketId", "market"):
        if isinstance(parameters.get(key), str):
            return "prediction", str(parameters[key])
    return None


def timing_agreement(agent_window: AgentWindow, outcomes: WindowOutcomes) -> tuple[int, int]:
    """(directional decisions that agreed with how the market ended, directional decisions judged)."""
    moves = {s.ticker: (s.change_percent or 0.0) for s in outcomes.stocks}
    resolved = {p.market_id: p.outcome for p in outcomes.predictions if p.market_id}
    agreed = judged = 0
    for step in agent_window.steps:
        if not step.llmCalls or not step.action.success:
            continue
        direction = _direction(step.action.actionType)
        target = _target(step.action.parameters)
        if direction == 0 or target is None:
            continue
        kind, name = target
        if kind == "stock" and name in moves and moves[name] != 0:
            judged += 1
            agreed += (moves[name] > 0) == (direction > 0)
        elif kind == "prediction" and resolved.get(name) in ("YES", "NO"):
            judged += 1
            bought_yes = "YES" in step.action.actionType.upper()
            agreed += bought_yes == (resolved[name] == "YES")
    return agreed, judged


# The game's agents start an hour with this much; the outcome judge falls back to it when the first step's
# numbers cannot give a starting balance (zero or negative: e.g. agentBalance equal to agentPnL).
DEFAULT_STARTING_BALANCE = 10_000.0


def _starting_balance(agent_window: AgentWindow) -> float:
    steps = agent_window.steps
    if steps:
        state = steps[0].environmentState
        start = state.agentBalance - state.agentPnL
        if math.isfinite(start) and start > 0:
            return start
    return DEFAULT_STARTING_BALANCE


def _finite(value: float) -> float:
    """The value itself, or the nearest finite one (huge P&L over a tiny balance overflows)."""
    if math.isnan(value):
        return 0.0
    return max(-sys.float_info.max, min(sys.float_info.max, value))


def max_drawdown(agent_window: AgentWindow) -> float:
    """Largest fall of P&L from a previous peak within the window, in dollars."""
    series = [s.environmentState.agentPnL for s in agent_window.steps]
    if agent_window.final_pnl is not None:
        series.append(agent_window.final_pnl)
    peak, worst = 0.0, 0.0
    for value in series:
        peak = max(peak, value)
        worst = max(worst, peak - value)
    return worst


@dataclass(frozen=True, slots=True)
class OutcomeJudge:
    """Deterministic reward from the ground truth: risk-adjusted P&L ranked against the window's peers (70%)
    and decision timing against the outcomes (30%). Not an LLM: free, instant, reproducible."""

    name: str = "outcome"
    version: str = "outcome-v1 (deterministic, not an LLM)"
    is_llm: bool = False
    pnl_weight: float = 0.7
    drawdown_penalty: float = 0.5

    def risk_adjusted_return(self, agent_window: AgentWindow) -> float:
        """P&L as a fraction of the starting balance, less a penalty for drawdown."""
        balance = _starting_balance(agent_window)
        pnl = agent_window.final_pnl or 0.0
        return _finite(_finite(pnl / balance) - _finite(self.drawdown_penalty * max_drawdown(agent_window) / balance))

    def judge_group(self, group: JudgeGroup) -> dict[str, Judgment]:
        """Score one group; ranks are within the group (its peers faced the same market)."""
        members = group.members
        adjusted = [self.risk_adjusted_return(aw) for aw in members]
        ranks = average_ranks(adjusted)
        results = {}
        for aw, value, rank in zip(members, adjusted, ranks, strict=True):
            peer = (rank - 1) / (len(members) - 1) if len(members) > 1 else 0.5
            agreed, judged = timing_agreement(aw, group.outcomes)
            timing = agreed / judged if judged else 0.5
            score = round(self.pnl_weight * peer + (1 - self.pnl_weight) * timing, 6)
            pnl = aw.final_pnl or 0.0
            truth = "" if group.outcomes.recorded else " (no outcomes recorded: timing counted as neutral)"
            results[aw.agent_window_id] = Judgment(
                score=min(1.0, max(0.0, score)),
                reasoning=(
                    f"P&L ${pnl:+,.2f}, max drawdown ${max_drawdown(aw):,.2f}, risk-adjusted return {value:+.2%}: "
                    f"rank {rank:g} of {len(members)} in its group; {agreed} of {judged} directional decisions "
                    f"agreed with how the market ended{truth}. Outcome judge: deterministic, not an LLM."
                ),
            )
        return results

    async def score(self, groups: Sequence[JudgeGroup]) -> JudgeResult:
        """Score every group (no calls, no tokens, no cost); a group that cannot be scored fails alone."""
        result = JudgeResult(scores={}, usage=JudgeUsage())
        for group in groups:
            try:
                result.scores.update(self.judge_group(group))
            except Exception as error:  # noqa: BLE001 - one group's failure is its own, never its run's
                result.failures[group.group_id] = f"{type(error).__name__}: {error}"
        return result


@dataclass(frozen=True, slots=True)
class MixedJudge:
    """The outcome judge's reward with RULER mixed in (RULER_WEIGHT): per agent-window, weight x RULER + (1 - weight)
    x outcome. The outcome part keeps the reward tied to the ground truth; RULER adds a judgment of the reasoning.
    A group either judge could not score fails alone."""

    outcome: Judge
    ruler: Judge
    ruler_weight: float

    def __post_init__(self) -> None:
        if not 0.0 < self.ruler_weight <= 1.0:
            raise ValueError(f"RULER_WEIGHT={self.ruler_weight}: mix RULER in with a weight in (0, 1]")

    @property
    def name(self) -> str:
        return f"outcome+{self.ruler.name}"

    @property
    def version(self) -> str:
        # Another weight is another reward: scores made with it are not reused. Kept short: the store holds 200 chars.
        return f"{self.ruler.version}+{self.outcome.version.split()[0]}@{self.ruler_weight:g}"

    @property
    def is_llm(self) -> bool:
        return True

    async def score(self, groups: Sequence[JudgeGroup]) -> JudgeResult:
        outcome, ruler = await self.outcome.score(groups), await self.ruler.score(groups)
        failures = {**outcome.failures, **ruler.failures}
        scores: dict[str, Judgment] = {}
        for group in groups:
            missing = [
                m.agent_window_id
                for m in group.members
                if m.agent_window_id not in outcome.scores or m.agent_window_id not in ruler.scores
            ]
            if missing and group.group_id not in failures:
                # A judge that skipped a member without failing its group fails that group here, alone.
                failures[group.group_id] = f"InvalidJudgment: no score for {len(missing)} member(s) {missing[:3]}"
            if group.group_id in failures:
                continue
            for member in group.members:
                key = member.agent_window_id
                by_outcome, by_ruler = outcome.scores[key], ruler.scores[key]
                mixed = self.ruler_weight * by_ruler.score + (1 - self.ruler_weight) * by_outcome.score
                scores[key] = Judgment(
                    score=round(min(1.0, max(0.0, mixed)), 6),
                    reasoning=(
                        f"{1 - self.ruler_weight:g} x outcome {by_outcome.score:.3f} + {self.ruler_weight:g} x RULER "
                        f"{by_ruler.score:.3f}. RULER: {by_ruler.reasoning}"
                    ),
                )
        return JudgeResult(scores=scores, usage=ruler.usage, failures=failures, usage_by_window=ruler.usage_by_window)
