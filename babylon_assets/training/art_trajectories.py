"""The training view (DESIGN 5) in ART's own types: one `art.Trajectory` per agent-window."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from babylon_assets.core.eligibility import AgentWindow
from babylon_assets.core.views import decision_conversations, training_metadata, training_metrics

if TYPE_CHECKING:
    import art


def to_art_trajectory(
    agent_window: AgentWindow, reward: float, group_id: str | None = None, decisions: Sequence[int] | None = None
) -> art.Trajectory:
    """The training view as an `art.Trajectory`: first decision in messages_and_choices, the rest as histories
    (only the `decisions` named by index, when given)."""
    import art
    from art.trajectories import History

    conversations = decision_conversations(agent_window)
    if decisions is not None:
        conversations = [conversations[i] for i in decisions if 0 <= i < len(conversations)]
    if not conversations:
        raise ValueError(f"agent-window {agent_window.agent_window_id} has no decision with an LLM call")
    first, *rest = conversations
    return art.Trajectory(
        messages_and_choices=first,  # type: ignore[arg-type]
        additional_histories=[History(messages_and_choices=c) for c in rest],  # type: ignore[arg-type]
        reward=reward,
        metrics=training_metrics(agent_window),
        metadata=training_metadata(agent_window, group_id),
    )
