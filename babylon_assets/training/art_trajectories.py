"""The training view (DESIGN 5) in ART's own types: one `art.Trajectory` per agent-window."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from babylon_assets.core.eligibility import AgentWindow
from babylon_assets.core.on_policy import SampledAnswer
from babylon_assets.core.views import decision_conversations, training_metadata, training_metrics

if TYPE_CHECKING:
    import art

# How ART (and vLLM's return_tokens_as_token_ids) spell a sampled token by its id.
TOKEN_ID_PREFIX = "token_id:"


def sampled_choice(answer: SampledAnswer) -> Any:
    """An answer as the OpenAI Choice ART trains on: its text, and its sampled tokens as `token_id:N` with the
    engine's logprobs and their bytes."""
    from openai.types.chat import ChatCompletionMessage, ChatCompletionTokenLogprob
    from openai.types.chat.chat_completion import Choice, ChoiceLogprobs

    return Choice(
        finish_reason="stop",
        index=0,
        message=ChatCompletionMessage(role="assistant", content=answer.text),
        logprobs=ChoiceLogprobs(
            content=[
                ChatCompletionTokenLogprob(
                    token=f"{TOKEN_ID_PREFIX}{token_id}",
                    logprob=logprob,
                    bytes=list(piece.encode()),
                    top_logprobs=[],
                )
                for token_id, logprob, piece in zip(answer.token_ids, answer.logprobs, answer.pieces, strict=True)
            ]
        ),
    )


def to_art_trajectory(
    agent_window: AgentWindow,
    reward: float,
    group_id: str | None = None,
    decisions: Sequence[int] | None = None,
    answers: Sequence[SampledAnswer | None] | None = None,
) -> art.Trajectory:
    """The training view as an `art.Trajectory`: first decision in messages_and_choices, the rest as histories
    (only the `decisions` named by index, when given). With `answers` (one per decision, on-policy play), each
    decision's answer is the Choice its engine sampled, and the metadata names the version and temperature."""
    import art
    from art.trajectories import History

    conversations: list[list[Any]] = list(decision_conversations(agent_window))
    metadata: dict[str, Any] = dict(training_metadata(agent_window, group_id))
    if answers is not None:
        if len(answers) != len(conversations):
            raise ValueError(f"{len(answers)} sampled answers for {len(conversations)} decisions")
        for index, answer in enumerate(answers):
            if answer is not None:
                conversations[index] = [*conversations[index][:-1], sampled_choice(answer)]
        known = [a for a in answers if a is not None]
        if known:
            metadata.update(
                {"policy_version": known[0].model_version, "temperature": known[0].temperature, "on_policy": True}
            )
    if decisions is not None:
        conversations = [conversations[i] for i in decisions if 0 <= i < len(conversations)]
    if not conversations:
        raise ValueError(f"agent-window {agent_window.agent_window_id} has no decision with an LLM call")
    first, *rest = conversations
    return art.Trajectory(
        messages_and_choices=first,
        additional_histories=[History(messages_and_choices=c) for c in rest],
        reward=reward,
        metrics=training_metrics(agent_window),
        metadata=metadata,
    )
