"""What every caller of an OpenAI-compatible endpoint (agents, the judge, the gateway) shares."""

from __future__ import annotations

# litellm wants a key even for a local server that checks none.
PLACEHOLDER_API_KEY = "sk-local-placeholder"


def speaks_openai(model: str, api_base: str | None) -> bool:
    """An `openai/...` model at an API base: a server that speaks OpenAI's protocol itself, so a request can go
    to it as is, without litellm's translation (and its per-call cost)."""
    return api_base is not None and model.startswith("openai/")
