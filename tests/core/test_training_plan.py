"""What each training iteration learns from: the seeded draws of windows and of decisions, and group ranks."""

import pytest

from babylon_assets.core.training_plan import (
    Spread,
    best_of_groups,
    ranks_within_groups,
    sample_decisions,
    sample_windows,
)

WINDOWS = [f"2025-01-15T{h:02d}:00" for h in range(10)]


def test_windows_are_drawn_by_seed_and_iteration_only():
    first = sample_windows(WINDOWS, 3, seed=1, iteration=1)
    assert first == sample_windows(list(reversed(WINDOWS)), 3, seed=1, iteration=1)  # order does not matter
    assert len(first) == 3 and first == sorted(first)
    assert len({tuple(sample_windows(WINDOWS, 3, 1, i)) for i in range(1, 8)}) > 1  # iterations differ
    assert sample_windows(WINDOWS[:2], 3, seed=1, iteration=1) == WINDOWS[:2]  # all when fewer


def test_decisions_are_drawn_per_trajectory_and_iteration():
    picked = sample_decisions(10, 3, seed=0, iteration=1, key="aw-1")
    assert len(picked) == 3 and picked == sorted(picked) and all(0 <= i < 10 for i in picked)
    assert picked == sample_decisions(10, 3, seed=0, iteration=1, key="aw-1")  # a resumed run draws the same
    draws = {tuple(sample_decisions(10, 3, seed=0, iteration=i, key=k)) for i in range(1, 5) for k in ("a", "b")}
    assert len(draws) > 1
    assert sample_decisions(10, 0, seed=0, iteration=1, key="a") == list(range(10))  # 0: all of them
    assert sample_decisions(2, 3, seed=0, iteration=1, key="a") == [0, 1]


def test_ranks_within_groups_share_ties_and_spread_summarises():
    ranked = ranks_within_groups([("g1", "a", 0.9), ("g1", "b", 0.2), ("g1", "c", 0.9), ("g2", "d", 0.5)])
    assert [(r["agent_window_id"], r["rank"]) for r in ranked] == [("a", 1), ("c", 1), ("b", 3), ("d", 1)]
    spread = Spread.of([1.0, 2.0, 6.0])
    assert (spread.low, spread.mean, spread.high, spread.count) == (1.0, 3.0, 6.0, 3)
    assert Spread.of([]).count == 0


def test_best_of_groups_takes_the_top_of_each_ranked_group():
    rewards = [
        ("g2", "b", 0.9),
        ("g1", "a", 0.2),
        ("g1", "c", 0.7),
        ("g1", "d", 0.7),
        ("g2", "e", 0.1),
        ("g3", "f", 0.5),
        ("g3", "h", 0.5),
    ]
    # g1: the tie at 0.7 goes to the member that sorts first; g3 ranks nobody (all equal) and gives nothing.
    assert best_of_groups(rewards) == ["c", "b"]
    assert best_of_groups(rewards, per_group=2) == ["c", "d", "b", "e"]
    assert best_of_groups(list(reversed(rewards))) == ["c", "b"]  # order of the input does not matter
    with pytest.raises(ValueError, match="at least 1"):
        best_of_groups(rewards, per_group=0)
