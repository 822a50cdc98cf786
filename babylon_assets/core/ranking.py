"""Ranking within a group, one rule for judging and training: best first, tied scores share the better rank
(competition ranking: 1, 1, 3), members listed by score and then by id; and which groups a judge must score
again. No Dagster here."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Ranked:
    """One member's place in its group: rank 1 is the best; `normalized` is its score min-max scaled within
    the group (0.5 for every member of a group whose scores are all equal)."""

    member: str
    score: float
    rank: int
    normalized: float


def rank_members(scores: Mapping[str, float]) -> list[Ranked]:
    """Every member of one group ranked: best first, ties share the better rank, listed by (score, id)."""
    ordered = sorted(scores.items(), key=lambda item: (-item[1], item[0]))
    if not ordered:
        return []
    low, high = ordered[-1][1], ordered[0][1]
    ranked: list[Ranked] = []
    for position, (member, score) in enumerate(ordered):
        tied = ranked and ranked[-1].score == score
        rank = ranked[-1].rank if tied else position + 1
        ranked.append(Ranked(member, score, rank, (score - low) / (high - low) if high > low else 0.5))
    return ranked


def rank_groups(rewards: Iterable[tuple[str, str, float]]) -> list[tuple[str, list[Ranked]]]:
    """(group, member, reward) -> each group's ranked members, groups in order of their ids."""
    by_group: dict[str, dict[str, float]] = {}
    for group, member, reward in rewards:
        by_group.setdefault(group, {})[member] = reward
    return [(group, rank_members(by_group[group])) for group in sorted(by_group)]


@dataclass(frozen=True, slots=True)
class StoredScore:
    """What the store holds of one kept member: its group, and the score and judge version, if judged."""

    group_id: str
    member: str
    score: float | None
    judge_version: str | None


def groups_to_judge(members: Sequence[StoredScore], judge_version: str) -> dict[str, list[str]]:
    """The groups a judge of `judge_version` must score, with their members: every group unless each of its
    members already holds a score from that very version (a new rubric or model re-judges everything)."""
    by_group: dict[str, list[StoredScore]] = {}
    for stored in members:
        by_group.setdefault(stored.group_id, []).append(stored)
    return {
        group: [m.member for m in group_members]
        for group, group_members in sorted(by_group.items())
        if not all(m.score is not None and m.judge_version == judge_version for m in group_members)
    }
