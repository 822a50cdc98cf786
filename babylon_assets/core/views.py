"""Two views of an agent-window (DESIGN 5). No Dagster here; `training.art_trajectories` wraps the training
view in ART's types.

- Training view: each decision is its own conversation exactly as the agent saw it (system prompt,
  user prompt, response); nothing of the ground truth, nothing of another decision.
- Judge view: one system message shared by the whole group (rubric + the window's ground truth), then
  the agent's own prompts and decisions in order.
"""

from __future__ import annotations

from typing import Any

from babylon_assets.core.eligibility import AgentWindow
from babylon_assets.core.on_policy import SampledAnswer
from babylon_assets.core.outcomes import WindowOutcomes
from babylon_assets.core.trajectory import LlmCall, Step

Message = dict[str, str]


def decision_call(step: Step) -> LlmCall | None:
    """The LLM call that made the step's decision: the one whose purpose is `action`, else the last."""
    if not step.llmCalls:
        return None
    return next((c for c in step.llmCalls if c.purpose == "action"), step.llmCalls[-1])


def decision_conversations(agent_window: AgentWindow) -> list[list[Message]]:
    """One [system, user, assistant] conversation per decision that carries an LLM call, in time order."""
    conversations = []
    for step in agent_window.steps:
        call = decision_call(step)
        if call is None:
            continue
        conversations.append(
            [
                {"role": "system", "content": call.systemPrompt},
                {"role": "user", "content": call.userPrompt},
                {"role": "assistant", "content": call.response},
            ]
        )
    return conversations


def decision_answers(
    agent_window: AgentWindow, sampled: dict[tuple[str, int], SampledAnswer]
) -> list[SampledAnswer | None]:
    """The sampled answer of each decision `decision_conversations` lists (same order), None where none was recorded
    with its token ids or it does not spell the recorded response."""
    answers: list[SampledAnswer | None] = []
    for trajectory in agent_window.trajectories:
        for step in trajectory.steps:
            call = decision_call(step)
            if call is None:
                continue
            answer = sampled.get((trajectory.trajectory_id, step.stepNumber))
            answers.append(answer if answer is not None and answer.aligned_with(call.response) else None)
    return answers


def training_metrics(agent_window: AgentWindow) -> dict[str, float | int | bool]:
    """Numbers only (ART logs them): the agent-window's P&L and how its decisions went."""
    steps = agent_window.steps
    return {
        "final_pnl": agent_window.final_pnl if agent_window.final_pnl is not None else 0.0,
        "decisions": agent_window.llm_decisions,
        "failed_actions": sum(1 for s in steps if not s.action.success),
        "rows_stitched": len(agent_window.trajectories),
    }


def training_metadata(agent_window: AgentWindow, group_id: str | None) -> dict[str, str | None]:
    """Ids only."""
    return {
        "agent_window_id": agent_window.agent_window_id,
        "window_id": agent_window.window_id,
        "agent_id": agent_window.agent_id,
        "group_id": group_id,
        "trajectory_ids": ",".join(agent_window.trajectory_ids),
    }


def ground_truth_text(outcomes: WindowOutcomes) -> str:
    """The window's ground truth in words: each ticker's move and news, each market's resolution."""
    lines = [f"Ground truth of window {outcomes.window_id} (UTC), known only after it closed:"]
    if not outcomes.recorded:
        lines.append("No market outcomes were recorded for this window.")
    for stock in outcomes.stocks:
        news = "; ".join(str(n) for n in stock.news) or "no news"
        lines.append(
            f"- {stock.ticker}: ${stock.start_price} -> ${stock.end_price} ({stock.change_percent:+}%), "
            f"sentiment {stock.sentiment}; news: {news}"
        )
    for market in outcomes.predictions:
        news = "; ".join(str(n) for n in market.news) or "no news"
        lines.append(f"- Prediction [{market.market_id}] {market.question} resolved {market.outcome}; news: {news}")
    return "\n".join(lines)


def judge_system_message(rubric: str, outcomes: WindowOutcomes) -> Message:
    """The one system message a whole group shares (so RULER's shared prefix sends it once)."""
    return {"role": "system", "content": f"{rubric}\n\n{ground_truth_text(outcomes)}"}


def judge_messages(agent_window: AgentWindow, rubric: str, outcomes: WindowOutcomes) -> list[Message]:
    """The judge view of one agent-window: shared system message, then its prompts and decisions in order."""
    messages: list[Message] = [judge_system_message(rubric, outcomes)]
    first = True
    for step in agent_window.steps:
        call = decision_call(step)
        if call is None:
            continue
        if first:
            messages.append(
                {
                    "role": "user",
                    "content": f"Agent {agent_window.agent_id}'s instructions:\n"
                    f"{call.systemPrompt}\n\n{call.userPrompt}",
                }
            )
            first = False
        else:
            messages.append({"role": "user", "content": call.userPrompt})
        outcome = "ok" if step.action.success else f"failed: {step.action.error}"
        result: Any = step.action.result
        messages.append(
            {
                "role": "assistant",
                "content": f"{call.response}\n[action {step.action.actionType}: {outcome}"
                f"{'' if result is None else f'; result {result}'}]",
            }
        )
    return messages
