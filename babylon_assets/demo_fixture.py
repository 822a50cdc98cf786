"""A small, deterministic fixture of game-shaped play for `make demo` (until the simulator lands).

Four closed windows before `now`: three ready (6 agents with 6 LLM decisions each), one with only
3 agents, plus rows that show the report's reasons (an evaluation run, a row whose stepsJson is cut
off, an agent with too few decisions). Loading it twice writes nothing the second time.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from babylon_assets.core.trajectory import Action, EnvironmentState, LlmCall
from babylon_assets.core.windows import WINDOW, window_id_of, window_start
from babylon_assets.db.recorder import RecordedLlmCall, TrajectoryRecorder
from babylon_assets.db.store import RecordedPlay, Store, naive_utc

TICKERS = ("NVDX", "TSLR", "BNNA")
SYSTEM_PROMPT = (
    "You are {agent}, a trader in Babylon. Trade perpetual futures on fictional stocks and yes/no "
    "prediction markets. Answer with one JSON object: "
    '{{"action": "BUY|SELL|HOLD", "ticker": str, "size": number, "reasoning": str}}.'
)


@dataclass(frozen=True, slots=True)
class DemoLoad:
    """What loading the fixture wrote."""

    windows: list[str]
    trajectories_written: int
    trajectories_skipped: int


def _call(agent: str, observation: str, decision: dict[str, object]) -> RecordedLlmCall:
    return RecordedLlmCall(
        call=LlmCall(
            model="demo-scripted",
            modelVersion="demo@0",
            systemPrompt=SYSTEM_PROMPT.format(agent=agent),
            userPrompt=observation,
            response=json.dumps(decision),
            temperature=0.7,
            maxTokens=256,
            latencyMs=0,
            purpose="action",
            actionType=str(decision["action"]),
        ),
        prompt_tokens=len(observation) // 4,
        completion_tokens=24,
    )


def _record_agent(
    recorder: TrajectoryRecorder,
    rng: random.Random,
    agent: str,
    window_start_at: datetime,
    decisions: int,
    *,
    is_evaluation: bool = False,
) -> None:
    trajectory_id = f"demo-{window_id_of(window_start_at)}-{agent}"
    begin = window_start_at + timedelta(minutes=rng.randint(1, 10))
    recorder.start(agent, trajectory_id=trajectory_id, start_time=begin, is_evaluation=is_evaluation,
                   scenario_id="demo", metadata={"source": "demo-fixture"})
    balance, pnl = 10_000.0, 0.0
    prices = {ticker: rng.uniform(20, 200) for ticker in TICKERS}
    for number in range(decisions):
        at = begin + timedelta(minutes=2 * number)
        ticker = rng.choice(TICKERS)
        prices[ticker] *= 1 + rng.gauss(0, 0.01)
        observation = f"Minute {2 * number}. Prices: " + ", ".join(
            f"{name} ${price:.2f}" for name, price in prices.items()
        ) + f". Your balance ${balance:,.2f}, P&L ${pnl:,.2f}."
        side = rng.choice(("BUY", "SELL", "HOLD"))
        decision = {"action": side, "ticker": ticker, "size": 100, "reasoning": "demo"}
        step_pnl = 0.0 if side == "HOLD" else rng.gauss(0, 40)
        pnl += step_pnl
        recorder.step(
            trajectory_id,
            environment_state=EnvironmentState(agentBalance=balance, agentPnL=pnl, openPositions=1),
            llm_calls=[_call(agent, observation, decision)],
            action=Action(actionType=side, parameters={"ticker": ticker, "size": 100}, success=True),
            reward=step_pnl / 100,
            at=at,
        )
    recorder.end(trajectory_id, final_balance=balance + pnl, final_pnl=round(pnl, 2),
                 trades_executed=decisions, end_time=begin + timedelta(minutes=2 * decisions))


def _truncated_row(window_start_at: datetime) -> RecordedPlay:
    moment = window_start_at + timedelta(minutes=30)
    return RecordedPlay(
        trajectories=[
            {
                "id": f"demo-row-{window_id_of(moment)}-cut",
                "trajectoryId": f"demo-{window_id_of(moment)}-cut-off",
                "agentId": "agent-cut-off",
                "startTime": naive_utc(moment),
                "endTime": naive_utc(moment + timedelta(minutes=5)),
                "durationMs": 300_000,
                "windowId": window_id_of(moment),
                "stepsJson": '[{"stepNumber": 0, "timestamp": 1, "environmentState": {"agentBal',
                "rewardComponentsJson": "{}",
                "metricsJson": "{}",
                "metadataJson": "{}",
                "totalReward": 0.0,
                "episodeLength": 1,
                "finalStatus": "completed",
            }
        ]
    )


def load_demo_fixture(store: Store, now: datetime, seed: int = 7) -> DemoLoad:
    """Write the fixture's windows ending before `now`; skips trajectories already there."""
    store.require_own_store("the demo fixture")
    rng = random.Random(seed)
    recorder = TrajectoryRecorder(store)
    first = window_start(now) - 4 * WINDOW
    windows = [first + i * WINDOW for i in range(4)]
    plan: list[tuple[datetime, str, int, bool]] = []
    for index, start in enumerate(windows):
        agents = 3 if index == 3 else 6
        plan.extend((start, f"agent-{n}", 6, False) for n in range(1, agents + 1))
        plan.append((start, "agent-eval", 6, True))
        plan.append((start, "agent-quiet", 2, False))
    wanted = {f"demo-{window_id_of(start)}-{agent}" for start, agent, _, _ in plan}
    existing = store.existing_trajectory_ids(wanted)
    written = 0
    for start, agent, decisions, is_evaluation in plan:
        if f"demo-{window_id_of(start)}-{agent}" in existing:
            continue
        _record_agent(recorder, rng, agent, start, decisions, is_evaluation=is_evaluation)
        written += 1
    skipped = len(existing)
    cut_off = _truncated_row(windows[0])
    if store.existing_trajectory_ids([cut_off.trajectories[0]["trajectoryId"]]):
        skipped += 1
    else:
        store.record_play(cut_off)
        written += 1
    for start in windows[:3]:
        store.replace_market_outcomes(
            window_id_of(start),
            [
                {
                    "stockTicker": ticker,
                    "startPrice": round(rng.uniform(20, 200), 2),
                    "endPrice": round(rng.uniform(20, 200), 2),
                    "changePercent": round(rng.uniform(-9, 9), 2),
                    "sentiment": rng.choice(("bullish", "bearish", "neutral")),
                    "newsEvents": [f"{ticker} demo headline"],
                }
                for ticker in TICKERS
            ],
        )
    return DemoLoad([window_id_of(w) for w in windows], written, skipped)
