"""The tiny model's tokenizer (the model itself is tests/conftest.py's `tiny_model`), and groups."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model: Path):
    from babylon_assets.training.base_models import load_tokenizer

    return load_tokenizer(tiny_model)


SYSTEM = "You are a trader in Babylon. Answer with one action."
PROMPT = "Window 2025-01-15T10:00. BTC perp at $100. Cash $10,000. Your action?"
RESPONSES = (
    '{"action": "buy", "ticker": "BTC", "size": 1}',
    '{"action": "hold"}',
    '{"action": "sell", "ticker": "BTC", "size": 1}',
    '{"action": "hold", "note": "wait"}',
)


def decision(response: str) -> list[dict[str, str]]:
    """One decision conversation as the training view writes it."""
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": PROMPT},
        {"role": "assistant", "content": response},
    ]


def group_of(rewards, responses=RESPONSES):
    """An ART TrajectoryGroup: one trajectory per response, with these rewards."""
    import art

    return art.TrajectoryGroup(
        [
            art.Trajectory(messages_and_choices=decision(r), reward=w)  # type: ignore[arg-type]
            for r, w in zip(responses, rewards, strict=False)
        ]
    )
