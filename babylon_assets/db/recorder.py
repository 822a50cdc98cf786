"""`TrajectoryRecorder`: how a Python agent records its play in the game's shape.

start -> step(s) with LLM calls -> end; `end` writes the `trajectories` row and its `llm_call_logs`
rows in one transaction. The window is the UTC hour of the start (the game's own recorder takes the
end hour, which splits an agent's play across windows; we do not copy that).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from babylon_assets.core.trajectory import (
    Action,
    EnvironmentState,
    LlmCall,
    ProviderAccess,
    Step,
    TrajectoryMetrics,
)
from babylon_assets.core.window_time import Clock, as_utc, utcnow, window_id_of
from babylon_assets.db.engine import naive_utc, new_id
from babylon_assets.db.play_records import PlayRecords, RecordedPlay
from babylon_assets.db.store import Store, StoreError


class RecorderError(StoreError):
    """The recorder was used out of order (a step after end, an unknown trajectory, ...)."""


@dataclass(slots=True)
class TokenLogprob:
    """One generated token and its log-probability, as an OpenAI-compatible endpoint returns it."""

    token: str
    logprob: float


@dataclass(slots=True)
class RecordedLlmCall:
    """An LLM call as the agent made it, with what the endpoint told us about it."""

    call: LlmCall
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    top_p: float | None = None
    logprobs: list[TokenLogprob] | None = None
    messages: list[dict[str, Any]] | None = None
    call_id: str = field(default_factory=new_id)


@dataclass(slots=True)
class _Step:
    step: Step
    calls: list[RecordedLlmCall]
    at: datetime


@dataclass(slots=True)
class _OpenTrajectory:
    trajectory_id: str
    row_id: str
    agent_id: str
    start_time: datetime
    scenario_id: str | None
    episode_id: str | None
    batch_id: str | None
    is_training_data: bool
    is_evaluation: bool
    metadata: dict[str, Any]
    steps: list[_Step] = field(default_factory=list)


class TrajectoryRecorder:
    """Records an agent's trajectories into the store in the game's shape."""

    def __init__(self, store: Store, *, clock: Clock = utcnow) -> None:
        self.store = store
        self.clock = clock
        self._open: dict[str, _OpenTrajectory] = {}

    def start(
        self,
        agent_id: str,
        *,
        trajectory_id: str | None = None,
        row_id: str | None = None,
        start_time: datetime | None = None,
        scenario_id: str | None = None,
        episode_id: str | None = None,
        batch_id: str | None = None,
        is_training_data: bool = True,
        is_evaluation: bool = False,
        metadata: dict[str, Any] | None = None,
    ) -> str:
        """Open a trajectory for `agent_id`; returns its trajectoryId."""
        trajectory_id = trajectory_id or new_id()
        if trajectory_id in self._open:
            raise RecorderError(f"trajectory {trajectory_id} is already open")
        self._open[trajectory_id] = _OpenTrajectory(
            trajectory_id=trajectory_id,
            row_id=row_id or new_id(),
            agent_id=agent_id,
            start_time=as_utc(start_time or self.clock()),
            scenario_id=scenario_id,
            episode_id=episode_id,
            batch_id=batch_id,
            is_training_data=is_training_data,
            is_evaluation=is_evaluation,
            metadata=dict(metadata or {}),
        )
        return trajectory_id

    def _get(self, trajectory_id: str) -> _OpenTrajectory:
        try:
            return self._open[trajectory_id]
        except KeyError:
            raise RecorderError(f"trajectory {trajectory_id} is not open (never started, or ended)") from None

    def step(
        self,
        trajectory_id: str,
        *,
        environment_state: EnvironmentState,
        action: Action,
        llm_calls: list[RecordedLlmCall] = (),  # type: ignore[assignment]
        provider_accesses: list[ProviderAccess] = (),  # type: ignore[assignment]
        reward: float = 0.0,
        at: datetime | None = None,
    ) -> int:
        """Add a step (its LLM calls, then the action and its result); returns the step number."""
        trajectory = self._get(trajectory_id)
        moment = as_utc(at or self.clock())
        number = len(trajectory.steps)
        step = Step(
            stepNumber=number,
            timestamp=int(moment.timestamp() * 1000),
            environmentState=environment_state,
            providerAccesses=list(provider_accesses),
            llmCalls=[recorded.call for recorded in llm_calls],
            action=action,
            reward=reward,
        )
        trajectory.steps.append(_Step(step, list(llm_calls), moment))
        return number

    def end(
        self,
        trajectory_id: str,
        *,
        final_status: str = "completed",
        final_balance: float | None = None,
        final_pnl: float | None = None,
        trades_executed: int | None = None,
        posts_created: int | None = None,
        end_time: datetime | None = None,
    ) -> str:
        """Close the trajectory and write it with its LLM calls in one transaction."""
        trajectory = self._get(trajectory_id)
        end = as_utc(end_time or self.clock())
        if end < trajectory.start_time:
            raise RecorderError(f"trajectory {trajectory_id} ends before it starts")
        for name, value in (("final_balance", final_balance), ("final_pnl", final_pnl)):
            if value is not None and not math.isfinite(value):
                raise RecorderError(f"{name} is {value}; record a finite number or None")
        play = self._build(trajectory, end, final_status, final_balance, final_pnl, trades_executed, posts_created)
        PlayRecords(self.store).record_play(play)
        del self._open[trajectory_id]
        return trajectory_id

    def discard(self, trajectory_id: str) -> None:
        """Forget an open trajectory without writing it."""
        self._open.pop(trajectory_id, None)

    def _build(
        self,
        trajectory: _OpenTrajectory,
        end: datetime,
        final_status: str,
        final_balance: float | None,
        final_pnl: float | None,
        trades_executed: int | None,
        posts_created: int | None,
    ) -> RecordedPlay:
        steps = [recorded.step for recorded in trajectory.steps]
        total_reward = float(sum(step.reward for step in steps))
        error_count = sum(1 for step in steps if not step.action.success)
        metrics = TrajectoryMetrics(
            episodeLength=len(steps),
            finalStatus=final_status,
            finalBalance=final_balance,
            finalPnL=final_pnl,
            tradesExecuted=trades_executed,
            postsCreated=posts_created,
            errorCount=error_count,
        )
        row = {
            "id": trajectory.row_id,
            "trajectoryId": trajectory.trajectory_id,
            "agentId": trajectory.agent_id,
            "startTime": naive_utc(trajectory.start_time),
            "endTime": naive_utc(end),
            "durationMs": int((end - trajectory.start_time).total_seconds() * 1000),
            "windowId": window_id_of(trajectory.start_time),
            "windowHours": 1,
            "episodeId": trajectory.episode_id,
            "scenarioId": trajectory.scenario_id,
            "batchId": trajectory.batch_id,
            "stepsJson": json.dumps([step.model_dump(mode="json") for step in steps]),
            "rewardComponentsJson": json.dumps({"environment": total_reward}),
            "metricsJson": metrics.model_dump_json(),
            "metadataJson": json.dumps(trajectory.metadata),
            "totalReward": total_reward,
            # The game keeps these both in metricsJson and as columns.
            **metrics.model_dump(exclude={"errorCount"}),
            "isTrainingData": trajectory.is_training_data,
            "isEvaluation": trajectory.is_evaluation,
        }
        calls = []
        for recorded_step in trajectory.steps:
            step_id = f"{trajectory.trajectory_id}:{recorded_step.step.stepNumber}"
            for recorded in recorded_step.calls:
                call = recorded.call
                metadata: dict[str, Any] = {"modelVersion": call.modelVersion}
                if recorded.logprobs is not None:
                    metadata["logprobs"] = [{"token": lp.token, "logprob": lp.logprob} for lp in recorded.logprobs]
                total = (
                    None
                    if recorded.prompt_tokens is None or recorded.completion_tokens is None
                    else recorded.prompt_tokens + recorded.completion_tokens
                )
                calls.append(
                    {
                        "id": recorded.call_id,
                        "trajectoryId": trajectory.trajectory_id,
                        "stepId": step_id,
                        "callId": recorded.call_id,
                        "timestamp": naive_utc(recorded_step.at),
                        "latencyMs": None if call.latencyMs is None else int(call.latencyMs),
                        "model": call.model,
                        "purpose": call.purpose,
                        "actionType": call.actionType,
                        "systemPrompt": call.systemPrompt,
                        "userPrompt": call.userPrompt,
                        "messagesJson": None if recorded.messages is None else json.dumps(recorded.messages),
                        "response": call.response,
                        "reasoning": call.reasoning,
                        "temperature": call.temperature,
                        "maxTokens": call.maxTokens,
                        "topP": recorded.top_p,
                        "promptTokens": recorded.prompt_tokens,
                        "completionTokens": recorded.completion_tokens,
                        "totalTokens": total,
                        "metadata": json.dumps(metadata),
                    }
                )
        return RecordedPlay(trajectories=[row], llm_calls=calls)
