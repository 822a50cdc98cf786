"""`babylon simulate`: fill a store of our own with simulated play and each window's market outcomes.

Deterministic (same seed and start, same rows) and idempotent (a second run writes nothing new).
Writes only where DESIGN 2 allows: never into a database that has the game's "User" table.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from babylon_assets.core.agent_protocol import ARCHETYPES
from babylon_assets.core.market import WindowMarket, generate_window_market
from babylon_assets.core.trajectory import Action, EnvironmentState, LlmCall, ProviderAccess
from babylon_assets.core.window_play import Agent, AgentWindowPlay, ScriptedAgent, play_window
from babylon_assets.core.window_time import WINDOW, window_id_of, window_start
from babylon_assets.db.play_records import PlayRecords
from babylon_assets.db.recorder import RecordedLlmCall, TokenLogprob, TrajectoryRecorder
from babylon_assets.db.store import Store
from babylon_assets.llm.agent import LlmAgent, LlmEndpoint

SCENARIO_ID = "babylon-sim"


@dataclass(frozen=True, slots=True)
class SimulationPlan:
    """What to simulate."""

    agents: int = 8
    windows: int = 3
    duration_minutes: int = 10
    seed: int = 7
    start: datetime | None = None  # the first window's hour; default: `windows` hours before now
    step_seconds: int = 60
    evaluation: bool = False
    llm: LlmEndpoint | None = None
    concurrency: int = 1  # LLM agents' calls of a step made at once (a server with parallel slots)

    def first_window(self, now: datetime) -> datetime:
        """The first window's start: `--start`, or the hour `windows` hours before now."""
        return window_start(self.start) if self.start is not None else window_start(now) - self.windows * WINDOW


@dataclass(slots=True)
class WindowResult:
    """One simulated window: who played and how it ended."""

    window_id: str
    written: int
    skipped: int
    plays: list[AgentWindowPlay]
    unparseable: int


@dataclass(slots=True)
class SimulationSummary:
    """Everything a run wrote."""

    windows: list[WindowResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def written(self) -> int:
        """Trajectories written by this run."""
        return sum(w.written for w in self.windows)

    @property
    def skipped(self) -> int:
        """Trajectories that were already there."""
        return sum(w.skipped for w in self.windows)


def build_agents(plan: SimulationPlan) -> list[Agent]:
    """`plan.agents` agents cycling through the archetypes; LLM agents when an endpoint is given."""
    archetypes = list(ARCHETYPES)
    agents: list[Agent] = []
    for index in range(plan.agents):
        archetype = archetypes[index % len(archetypes)]
        if plan.llm is None:
            agents.append(ScriptedAgent(f"agent-{index + 1:02d}-{archetype}", archetype, plan.seed))
        else:
            agents.append(LlmAgent(f"llm-agent-{index + 1:02d}-{archetype}", archetype, plan.llm))
    return agents


def trajectory_id_for(plan: SimulationPlan, window_id: str, agent_id: str) -> str:
    """Stable trajectoryId of one agent's play in one window of this plan."""
    kind = "eval" if plan.evaluation else "train"
    return f"sim-s{plan.seed}-{kind}-{window_id}-{agent_id}"


def _record(recorder: TrajectoryRecorder, plan: SimulationPlan, play: AgentWindowPlay, trajectory_id: str) -> None:
    recorder.start(
        play.agent_id,
        trajectory_id=trajectory_id,
        row_id=f"row-{trajectory_id}",
        start_time=play.start,
        scenario_id=SCENARIO_ID,
        episode_id=f"s{plan.seed}-{play.window_id}",
        is_evaluation=plan.evaluation,
        metadata={
            "archetype": play.archetype,
            "seed": plan.seed,
            "source": "simulator",
            "liquidations": play.liquidations,
            "fundingPaid": play.funding_paid,
        },
    )
    for record in play.decisions:
        reply = record.reply
        call = LlmCall(
            model=reply.model,
            modelVersion=reply.model_version,
            systemPrompt=record.system_prompt,
            userPrompt=record.user_prompt,
            response=reply.text,
            temperature=plan.llm.temperature if plan.llm else 0.0,
            maxTokens=plan.llm.max_tokens if plan.llm else 256,
            latencyMs=round(reply.latency_ms, 3),
            purpose="action",
            actionType=record.decision.action,
        )
        logprobs = None if reply.logprobs is None else [TokenLogprob(t, lp) for t, lp in reply.logprobs]
        recorder.step(
            trajectory_id,
            environment_state=EnvironmentState(
                agentBalance=round(record.balance, 2),
                agentPnL=round(record.pnl, 2),
                openPositions=record.open_positions,
            ),
            provider_accesses=[
                ProviderAccess(providerName="babylon-market", purpose="observation", data={"step": record.step})
            ],
            llm_calls=[
                RecordedLlmCall(
                    call,
                    prompt_tokens=reply.prompt_tokens,
                    completion_tokens=reply.completion_tokens,
                    logprobs=logprobs,
                    call_id=f"{trajectory_id}:{record.step}",
                )
            ],
            action=Action(
                actionType=record.decision.action,
                parameters=record.decision.model_dump(exclude={"action", "reasoning"}, exclude_none=True),
                success=record.success,
                result=record.result,
                error=record.error,
                reasoning=record.decision.reasoning or None,
            ),
            reward=record.reward,
            at=record.at,
        )
    recorder.end(
        trajectory_id,
        final_status="completed",
        final_balance=play.final_balance,
        final_pnl=play.final_pnl,
        trades_executed=play.trades,
        posts_created=0,
        end_time=play.end,
    )


def outcome_rows(market: WindowMarket, plays: list[AgentWindowPlay]) -> list[dict[str, Any]]:
    """The window's `market_outcomes`: a stock row per ticker and a resolved row per prediction market."""
    rows: list[dict[str, Any]] = []
    for ticker, path in market.prices.items():
        change = (path[-1] / path[0] - 1) * 100
        rows.append(
            {
                "stockTicker": ticker,
                "startPrice": round(path[0], 2),
                "endPrice": round(path[-1], 2),
                # numeric(5,2) in the game's schema
                "changePercent": round(max(-999.99, min(999.99, change)), 2),
                "sentiment": "bullish" if change >= 2 else "bearish" if change <= -2 else "neutral",
                "newsEvents": [e.headline for e in market.news if e.ticker == ticker],
            }
        )
    for prediction in market.predictions:
        traded = sum(
            d.decision.amount
            for p in plays
            for d in p.decisions
            if d.success and d.decision.marketId == prediction.market_id
        )
        rows.append(
            {
                "predictionMarketId": prediction.market_id,
                "question": prediction.question,
                "outcome": prediction.outcome,
                "finalProbability": round(market.probabilities[prediction.market_id][-2], 4),
                "volume": round(traded, 2),
                "newsEvents": [e.headline for e in market.news if e.market_id == prediction.market_id],
            }
        )
    return rows


def simulate(
    store: Store,
    plan: SimulationPlan,
    *,
    now: datetime,
    agents: list[Agent] | None = None,
    on_window: Callable[[WindowResult], None] | None = None,
) -> SimulationSummary:
    """Simulate `plan.windows` consecutive windows and write them; skips trajectories already written."""
    store.require_own_store("simulated play")
    started = time.perf_counter()
    agents = agents if agents is not None else build_agents(plan)
    recorder = TrajectoryRecorder(store)
    summary = SimulationSummary()
    first = plan.first_window(now)
    for index in range(plan.windows):
        start = first + index * WINDOW
        if start + WINDOW > now:
            raise ValueError(
                f"window {window_id_of(start)} has not ended at {now:%Y-%m-%dT%H:%M}Z; simulated windows must be "
                "closed hours (choose an earlier --start)"
            )
        window_id = window_id_of(start)
        # The market depends on the seed and the hour only: evaluation play faces the same market.
        market = generate_window_market(
            plan.seed,
            window_id,
            duration_minutes=plan.duration_minutes,
            step_seconds=plan.step_seconds,
        )
        plays = play_window(market, agents, window_start=start, concurrency=plan.concurrency)
        ids = {play.agent_id: trajectory_id_for(plan, window_id, play.agent_id) for play in plays}
        existing = store.existing_trajectory_ids(ids.values())
        # Through the gateway the agents' calls are recorded there, as the game's agents' are.
        via_gateway = plan.llm is not None and plan.llm.via_gateway
        for play in plays:
            if ids[play.agent_id] not in existing and not via_gateway:
                _record(recorder, plan, play, ids[play.agent_id])
        # Held-out play never rewrites a window's ground truth: the training play's (or the first
        # policy's) outcomes stand, so every policy evaluated on this hour is judged against the same truth.
        if not plan.evaluation or not store.windows_with_outcomes([window_id]):
            PlayRecords(store).replace_market_outcomes(window_id, outcome_rows(market, plays))
        result = WindowResult(
            window_id=window_id,
            written=len(plays) - len(existing),
            skipped=len(existing),
            plays=plays,
            unparseable=sum(1 for p in plays for d in p.decisions if d.parse_error),
        )
        summary.windows.append(result)
        if on_window is not None:
            on_window(result)
    summary.seconds = time.perf_counter() - started
    return summary
