"""The training dataset (DESIGN 4): the union of scored groups in the lookback, minus groups that cannot
teach anything. No Dagster here.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from babylon_assets.core.advantages import ZERO_VARIANCE


@dataclass(frozen=True, slots=True)
class DatasetMemberRow:
    """One scored agent-window in the dataset."""

    agent_window_id: str
    window_id: str
    group_id: str
    reward: float


@dataclass(slots=True)
class DatasetPlan:
    """Which groups make the dataset, and why the others do not."""

    members: list[DatasetMemberRow] = field(default_factory=list)
    dropped_groups: Counter[str] = field(default_factory=Counter)

    @property
    def dataset_id(self) -> str:
        """A hash of the membership and rewards: the same dataset always has the same id."""
        digest = hashlib.sha256()
        for m in sorted(self.members, key=lambda m: (m.group_id, m.agent_window_id)):
            digest.update(f"{m.group_id}|{m.agent_window_id}|{m.reward:.9f}\n".encode())
        return digest.hexdigest()[:32]

    @property
    def windows(self) -> int:
        """Windows contributing at least one group."""
        return len({m.window_id for m in self.members})

    @property
    def groups(self) -> int:
        """Groups in the dataset."""
        return len({m.group_id for m in self.members})


def group_std(rewards: list[float]) -> float:
    """Population standard deviation."""
    mean = sum(rewards) / len(rewards)
    return math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards))


def plan_dataset(kept_members: Iterable[Mapping[str, Any]]) -> DatasetPlan:
    """Keep each fully scored group whose rewards vary; count the dropped groups by reason."""
    by_group: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in kept_members:
        by_group[row["group_id"]].append(row)
    plan = DatasetPlan()
    for group_id in sorted(by_group):
        rows = by_group[group_id]
        if any(row["score"] is None for row in rows):
            plan.dropped_groups["unscored"] += 1
            continue
        rewards = [float(row["score"]) for row in rows]
        if group_std(rewards) < ZERO_VARIANCE:
            # GRPO's advantage is zero for every member: the group teaches nothing.
            plan.dropped_groups["zero_variance"] += 1
            continue
        plan.members.extend(
            DatasetMemberRow(row["agent_window_id"], row["window_id"], group_id, float(row["score"])) for row in rows
        )
    return plan
