"""Builders of game-shaped test data: steps, raw rows and recorded play."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from babylon_assets.core.agent_protocol import Observation
from babylon_assets.core.trajectory import TrajectoryRow
from babylon_assets.core.window_time import window_id_of
from babylon_assets.db.engine import naive_utc


def observation(cash: float = 100.0, **changes: Any) -> Observation:
    """An agent's observation of a one-ticker market with nothing held (`changes` set any other field)."""
    fields: dict[str, Any] = {
        "minute": 0,
        "step": 0,
        "steps": 1,
        "prices": {"NVDX": 1.0},
        "open_prices": {"NVDX": 1.0},
        "previous_prices": {"NVDX": 1.0},
        "funding_rates": {"NVDX": 0.0},
        "cash": cash,
        "equity": cash,
        "pnl": 0.0,
    }
    return Observation(**{**fields, **changes})


def llm_call(agent: str = "agent-1", user_prompt: str = "Prices: NVDX $100.", **extra: Any) -> dict[str, Any]:
    """One llmCalls entry as the game writes it."""
    return {
        "model": "test-model",
        "systemPrompt": f"You are {agent}, a Babylon trader.",
        "userPrompt": user_prompt,
        "response": '{"action": "BUY", "ticker": "NVDX", "size": 10}',
        "temperature": 0.7,
        "maxTokens": 128,
        "purpose": "action",
        "actionType": "BUY",
        **extra,
    }


def step(
    number: int, *, pnl: float = 0.0, calls: int = 1, agent: str = "agent-1", user_prompt: str = "Prices: NVDX $100."
) -> dict[str, Any]:
    """One stepsJson entry with `calls` LLM calls."""
    return {
        "stepNumber": number,
        "timestamp": 1_736_900_000_000 + number * 60_000,
        "environmentState": {"agentBalance": 10_000.0, "agentPnL": pnl, "openPositions": 0},
        "providerAccesses": [{"providerName": "market", "data": {"NVDX": 100}, "purpose": "prices"}],
        "llmCalls": [llm_call(agent, user_prompt) for _ in range(calls)],
        "action": {"actionType": "BUY", "parameters": {"ticker": "NVDX"}, "success": True},
        "reward": 0.1,
    }


def game_row(
    trajectory_id: str,
    agent_id: str,
    start: datetime,
    *,
    steps: list[dict[str, Any]] | str | None = None,
    decisions: int = 6,
    window_id: str | None | type = ...,  # type: ignore[assignment]
    final_pnl: float | None = 12.5,
    metrics: dict[str, Any] | str | None = None,
    is_evaluation: bool = False,
    is_training_data: bool = True,
    minutes: int = 10,
) -> dict[str, Any]:
    """A `trajectories` row as the game's Prisma client writes it (camelCase keys)."""
    if steps is None:
        steps = [step(n, agent=agent_id) for n in range(decisions)]
        for n, made in enumerate(steps):  # a row's steps happen during the row, as the game records them
            made["timestamp"] = int(start.timestamp() * 1000) + n * 60_000
    steps_json = steps if isinstance(steps, str) else json.dumps(steps)
    if metrics is None:
        metrics = {"episodeLength": decisions, "finalStatus": "completed", "finalPnL": final_pnl}
    metrics_json = metrics if isinstance(metrics, str) else json.dumps(metrics)
    return {
        "id": f"row-{trajectory_id}",
        "trajectoryId": trajectory_id,
        "agentId": agent_id,
        "startTime": naive_utc(start),
        "endTime": naive_utc(start + timedelta(minutes=minutes)),
        "durationMs": minutes * 60_000,
        "windowId": window_id_of(start) if window_id is ... else window_id,
        "windowHours": 1,
        "stepsJson": steps_json,
        "rewardComponentsJson": "{}",
        "metricsJson": metrics_json,
        "metadataJson": "{}",
        "totalReward": 0.6,
        "episodeLength": decisions,
        "finalStatus": "completed",
        "finalBalance": 10_012.5,
        "finalPnL": final_pnl,
        "tradesExecuted": decisions,
        "isTrainingData": is_training_data,
        "isEvaluation": is_evaluation,
        "updatedAt": naive_utc(start + timedelta(minutes=minutes)),
    }


def as_trajectory_row(values: dict[str, Any]) -> TrajectoryRow:
    """The raw row the store would hand to the parser."""
    from babylon_assets.core.trajectory import TRAJECTORY_COLUMNS

    return TrajectoryRow(*(values.get(name) for name in TRAJECTORY_COLUMNS))
