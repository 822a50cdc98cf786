"""An LLM agent: the simulator's prompt and parser, answered by any OpenAI-compatible endpoint via litellm.

It asks for token logprobs and records them when the endpoint returns them. A failed call is not
retried forever: after `retries` it becomes a recorded HOLD with the error (the play goes on).

The policy is the constrained policy (issue 20): each call sends the observation's decision schema as
`response_format` (llama.cpp, vLLM and OpenAI enforce it), with a `max_tokens` no allowed answer exceeds. An
upstream that refuses the schema gets the same call again without it, and the reply says why.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from typing import Any

from babylon_assets.core.agent_protocol import Observation
from babylon_assets.core.decision_schema import decision_schema, max_answer_tokens, response_format
from babylon_assets.core.market import stable_seed
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
    # Send the observation's decision schema as response_format (the constrained policy).
    structured: bool = True
    # Rollouts sample the model's own distribution: llama.cpp's top_k/top_p/min_p and penalties made neutral, so
    # the only change to the model's probabilities is the temperature (which the trainer applies too) and the schema.
    neutral_sampler: bool = False
    # Paired evaluation: each call's sampler seed is a function of the seat and the decision's time alone, so every
    # policy that plays the seat draws the same random numbers there (common random numbers).
    common_random_numbers: bool = False


# llama.cpp's defaults cut the tail (top_k 40, top_p 0.95, min_p 0.05); these leave the distribution whole.
NEUTRAL_SAMPLER: dict[str, float] = {
    "top_k": 0,
    "top_p": 1.0,
    "min_p": 0.0,
    "typical_p": 1.0,
    "repeat_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
}
_SCHEMA_WORDS = re.compile(r"response_format|json_schema|grammar|schema", re.I)


def refuses_schema(error: BaseException) -> bool:
    """Whether an upstream's error is its refusal of the response_format (a 400 naming it), not a failed call."""
    status = getattr(error, "status_code", None)
    return status == 400 and _SCHEMA_WORDS.search(str(error)) is not None


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

    def __init__(self, agent_id: str, archetype: str, endpoint: LlmEndpoint, seat_name: str | None = None) -> None:
        self.agent_id = agent_id
        self.archetype = archetype
        self.endpoint = endpoint
        self.seat_name = seat_name or agent_id  # the name its prompts give it (core.window_play.seat_name)

    def start_window(self, window_id: str) -> None:
        """Nothing to reset: the model is stateless between calls."""

    def sampler_seed(self, observation: Observation) -> int:
        """The seed of this seat's decision at this observation, the same whichever policy answers it."""
        return stable_seed("sampler", self.seat_name, observation.time, observation.step) % 2**31

    def _extra_body(self, observation: Observation, note: str | None) -> dict[str, Any]:
        body: dict[str, Any] = dict(NEUTRAL_SAMPLER) if self.endpoint.neutral_sampler else {}
        if self.endpoint.common_random_numbers:
            body["seed"] = self.sampler_seed(observation)
        if self.endpoint.via_gateway:
            body["babylon"] = self._gateway_state(observation, note)
        return body

    def _gateway_state(self, observation: Observation, note: str | None) -> dict[str, Any]:
        state: dict[str, Any] = {
            "balance": observation.cash,
            "pnl": observation.pnl,
            "openPositions": len(observation.positions),
        }
        if observation.time:  # simulated time; the game's agents play in real time
            state["at"] = observation.time
        if self.endpoint.evaluation:
            state["evaluation"] = True
        if note:
            state["note"] = note
        return state

    def respond(self, system: str, user: str, observation: Observation) -> AgentReply:
        """Ask the model, constrained by the observation's schema; the reply carries its tokens and logprobs, or
        the error of a failed call. A refused schema is asked again without it (the reply's note says why)."""
        endpoint = self.endpoint
        started = time.perf_counter()
        schema = decision_schema(observation) if endpoint.structured else None
        note = None
        try:
            try:
                response = self._call(system, user, observation, schema, None)
            except Exception as error:
                if schema is None or not refuses_schema(error):
                    raise
                note = f"structured output refused, asked again without it: {type(error).__name__}: {error}"[:500]
                schema = None
                response = self._call(system, user, observation, None, note)
        except Exception as error:  # noqa: BLE001 - any endpoint failure becomes a recorded HOLD
            return AgentReply(
                text="",
                model=endpoint.model,
                latency_ms=(time.perf_counter() - started) * 1000,
                error=f"{type(error).__name__}: {error}"[:500],
                note=note,
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
            schema=schema,
            note=note,
        )

    def _call(
        self, system: str, user: str, observation: Observation, schema: dict[str, Any] | None, note: str | None
    ) -> Any:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        import litellm

        endpoint = self.endpoint
        options: dict[str, Any] = {}
        max_tokens = endpoint.max_tokens
        if schema is not None:
            options["response_format"] = response_format(observation)
            max_tokens = max(max_tokens, max_answer_tokens(schema))
        extra_body = self._extra_body(observation, note)
        if extra_body:
            options["extra_body"] = extra_body
        if endpoint.via_gateway:
            options["extra_headers"] = {"X-Babylon-Agent": self.agent_id}
        return litellm.completion(
            model=endpoint.model,
            api_base=endpoint.api_base,
            api_key=endpoint.api_key or PLACEHOLDER_API_KEY,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
            temperature=endpoint.temperature,
            max_tokens=max_tokens,
            logprobs=endpoint.logprobs,
            timeout=endpoint.timeout_s,
            num_retries=endpoint.retries,  # litellm retries failed calls, never a 400 such as a refused schema
            **options,
        )
