"""An LLM agent: the simulator's prompt and parser, answered by any OpenAI-compatible endpoint via litellm.

It asks for token logprobs and records them when the endpoint returns them. A failed call is not
retried forever: after `retries` it becomes a recorded HOLD with the error (the play goes on).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from babylon_assets.core.agent_protocol import Observation
from babylon_assets.core.window_play import AgentReply
from babylon_assets.llm.openai_compat import PLACEHOLDER_API_KEY


@dataclass(frozen=True, slots=True)
class LlmEndpoint:
    """Where an LLM agent's calls go (settings AGENT_MODEL, AGENT_API_BASE, AGENT_API_KEY)."""

    model: str
    api_base: str | None = None
    api_key: str | None = None
    temperature: float = 0.7
    max_tokens: int = 256
    timeout_s: float = 60.0
    retries: int = 2
    logprobs: bool = True
    # Through the gateway: name the agent (X-Babylon-Agent) and report its account and simulated time, so the
    # gateway records the call into the agent's hour.
    via_gateway: bool = False
    # Held-out play (through the gateway: its trajectories are created isEvaluation, never trained on).
    evaluation: bool = False


def _logprobs_of(choice: Any) -> list[tuple[str, float]] | None:
    content = getattr(getattr(choice, "logprobs", None), "content", None)
    if content is None and isinstance(getattr(choice, "logprobs", None), dict):
        content = choice.logprobs.get("content")
    if not content:
        return None
    pairs = []
    for item in content:
        token = item["token"] if isinstance(item, dict) else item.token
        logprob = item["logprob"] if isinstance(item, dict) else item.logprob
        pairs.append((str(token), float(logprob)))
    return pairs


class LlmAgent:
    """A trader whose decisions come from a language model."""

    def __init__(self, agent_id: str, archetype: str, endpoint: LlmEndpoint) -> None:
        self.agent_id = agent_id
        self.archetype = archetype
        self.endpoint = endpoint

    def start_window(self, window_id: str) -> None:
        """Nothing to reset: the model is stateless between calls."""

    def _gateway_fields(self, observation: Observation) -> dict[str, Any]:
        if not self.endpoint.via_gateway:
            return {}
        state: dict[str, Any] = {
            "balance": observation.cash,
            "pnl": observation.pnl,
            "openPositions": len(observation.positions),
            "at": observation.time,
        }
        if self.endpoint.evaluation:
            state["evaluation"] = True
        return {"extra_headers": {"X-Babylon-Agent": self.agent_id}, "extra_body": {"babylon": state}}

    def respond(self, system: str, user: str, observation: Observation) -> AgentReply:
        """Ask the model; the reply carries its tokens and logprobs, or the error of a failed call."""
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        import litellm

        endpoint = self.endpoint
        started = time.perf_counter()
        try:
            response = litellm.completion(
                model=endpoint.model,
                api_base=endpoint.api_base,
                api_key=endpoint.api_key or PLACEHOLDER_API_KEY,
                messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
                temperature=endpoint.temperature,
                max_tokens=endpoint.max_tokens,
                logprobs=endpoint.logprobs,
                timeout=endpoint.timeout_s,
                num_retries=endpoint.retries,
                **self._gateway_fields(observation),
            )
        except Exception as error:  # noqa: BLE001 - any endpoint failure becomes a recorded HOLD
            return AgentReply(
                text="",
                model=endpoint.model,
                latency_ms=(time.perf_counter() - started) * 1000,
                error=f"{type(error).__name__}: {error}"[:500],
            )
        choice = response.choices[0]
        usage = getattr(response, "usage", None)
        return AgentReply(
            text=choice.message.content or "",
            model=endpoint.model,
            model_version=getattr(response, "model", None),
            prompt_tokens=getattr(usage, "prompt_tokens", None),
            completion_tokens=getattr(usage, "completion_tokens", None),
            logprobs=_logprobs_of(choice),
            latency_ms=(time.perf_counter() - started) * 1000,
        )
