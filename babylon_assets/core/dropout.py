"""Dropout and groups (DESIGN 4), before judging: dropout saves judge money. No Dagster here."""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from babylon_assets.core.market import stable_seed

DEFAULT_DROPOUT_SEED = "babylon-dropout-v1"


def dropout_rate(total_eligible: int, target: int, max_dropout: float) -> float:
    """max(0, min(max_dropout, 1 - target / total)); no dropout when there is nothing to thin."""
    if total_eligible <= 0:
        return 0.0
    return max(0.0, min(max_dropout, 1.0 - target / total_eligible))


def dropout_draw(agent_window_id: str, seed: str = DEFAULT_DROPOUT_SEED) -> float:
    """A stable draw in [0, 1) per agent-window: kept when draw >= rate, so a lower rate keeps a superset."""
    digest = hashlib.blake2b(f"{seed}|{agent_window_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def group_sizes(kept: int, max_per_group: int) -> list[int]:
    """Cut `kept` members into as few groups of at most `max_per_group` as possible, sizes as equal as possible.

    Equal sizes lose no member to a remainder group of one (17 by 8 is 6+6+5, not 8+8+1).
    """
    if kept <= 0:
        return []
    count = math.ceil(kept / max_per_group)
    base, extra = divmod(kept, count)
    return [base + 1] * extra + [base] * (count - extra)


@dataclass(frozen=True, slots=True)
class Membership:
    """Where one eligible agent-window ended up."""

    agent_window_id: str
    kept: bool
    reason: str  # "kept", "dropout", "group_too_small", "window_not_ready"
    group_id: str | None
    draw: float


def assign_groups(
    window_id: str,
    agent_window_ids: Sequence[str],
    *,
    rate: float,
    max_per_group: int,
    ready: bool,
    seed: str = DEFAULT_DROPOUT_SEED,
) -> list[Membership]:
    """Apply dropout, shuffle the kept with a seed from the window id, cut into groups; every id gets a reason."""
    ids = sorted(set(agent_window_ids))
    draws = {aw: dropout_draw(aw, seed) for aw in ids}
    if not ready:
        return [Membership(aw, False, "window_not_ready", None, draws[aw]) for aw in ids]
    kept = [aw for aw in ids if draws[aw] >= rate]
    result = [Membership(aw, False, "dropout", None, draws[aw]) for aw in ids if draws[aw] < rate]
    random.Random(stable_seed("groups", seed, window_id)).shuffle(kept)
    start = 0
    for number, size in enumerate(group_sizes(len(kept), max_per_group), start=1):
        members = kept[start : start + size]
        start += size
        if size < 2:
            result.extend(Membership(aw, False, "group_too_small", None, draws[aw]) for aw in members)
            continue
        group_id = f"{window_id}#g{number}"
        result.extend(Membership(aw, True, "kept", group_id, draws[aw]) for aw in members)
    return sorted(result, key=lambda m: m.agent_window_id)
