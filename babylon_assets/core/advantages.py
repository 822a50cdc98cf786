"""GRPO's group-relative advantages (DESIGN 5, 6): plain arithmetic, no torch, no Dagster."""

from __future__ import annotations

import math
from collections.abc import Sequence

# Added to the group's standard deviation so a nearly flat group cannot blow advantages up.
ADVANTAGE_EPS = 1e-6
# Groups whose rewards spread less than this carry no learning signal (every advantage ~0).
ZERO_VARIANCE = 1e-9


def group_advantages(rewards: Sequence[float], *, scale: bool = True, eps: float = ADVANTAGE_EPS) -> list[float] | None:
    """(reward - group mean) / (group std + eps) for each member; None for a group with no spread.

    The standard deviation is the population one (GRPO compares members of one group, not samples of a
    larger one). With `scale=False` only the mean is removed (ART's `scale_rewards=False`).
    """
    if len(rewards) < 2:
        return None
    mean = sum(rewards) / len(rewards)
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards))
    if std < ZERO_VARIANCE:
        return None
    return [(r - mean) / (std + eps) if scale else r - mean for r in rewards]
