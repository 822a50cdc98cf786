"""What each training iteration learns from, and the numbers a training summary prints. No Dagster here."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

from babylon_assets.core.ranking import rank_groups


def sample_windows(window_ids: Sequence[str], per_iteration: int, seed: int, iteration: int) -> list[str]:
    """Up to `per_iteration` windows for one iteration (all of them when fewer exist), in time order.

    The draw depends only on (seed, iteration, the set of windows), so a resumed run draws what the
    interrupted one would have.
    """
    ordered = sorted(set(window_ids))
    if len(ordered) <= per_iteration:
        return ordered
    key = hashlib.sha256(f"{seed}:{iteration}:{','.join(ordered)}".encode()).digest()
    return sorted(random.Random(key).sample(ordered, per_iteration))


def sample_decisions(count: int, per_trajectory: int, seed: int, iteration: int, key: str) -> list[int]:
    """Which of a trajectory's `count` decisions one iteration trains on: up to `per_trajectory` of them
    (all when 0 or when fewer exist), in order. Like sample_windows, the draw depends only on its inputs."""
    if per_trajectory <= 0 or count <= per_trajectory:
        return list(range(count))
    digest = hashlib.sha256(f"{seed}:{iteration}:{key}".encode()).digest()
    return sorted(random.Random(digest).sample(range(count), per_trajectory))


def best_of_groups(rewards: Sequence[tuple[str, str, float]], per_group: int = 1) -> list[str]:
    """(group, member, reward) -> the `per_group` best-rewarded members of every group, group by group.

    The warm start's data (supervised fine-tuning on what the judge ranked best in each window): ties go to
    the member that sorts first, so the choice depends only on the inputs. Groups whose rewards are all
    equal carry no ranking and give nothing.
    """
    if per_group < 1:
        raise ValueError(f"per_group must be at least 1, got {per_group}")
    chosen: list[str] = []
    for _, members in rank_groups(rewards):
        if len({m.score for m in members}) >= 2:
            chosen.extend(m.member for m in members[:per_group])
    return chosen


@dataclass(frozen=True)
class Spread:
    """Minimum, mean and maximum of some numbers (zeros when there are none)."""

    low: float
    mean: float
    high: float
    count: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        """The spread of these values."""
        if not values:
            return cls(0.0, 0.0, 0.0, 0)
        return cls(min(values), sum(values) / len(values), max(values), len(values))

    def __str__(self) -> str:
        return f"min {self.low:.3f}  mean {self.mean:.3f}  max {self.high:.3f}  (n={self.count})"


def ranks_within_groups(rewards: Sequence[tuple[str, str, float]]) -> list[dict[str, object]]:
    """(group, member, reward) -> each member's rank in its group, by the one ranking rule (core.ranking)."""
    ranked: list[dict[str, object]] = []
    for group, members in rank_groups(rewards):
        for m in members:
            ranked.append({"group_id": group, "agent_window_id": m.member, "reward": m.score, "rank": m.rank})
    return ranked
