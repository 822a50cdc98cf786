"""The one ranking rule (core.ranking): the judge's stored ranks and training's lineage ranks agree, ties
included; and a group is judged again exactly when one of its members lacks this judge version's score."""

from babylon_assets.core.ranking import StoredScore, groups_to_judge, rank_groups, rank_members
from babylon_assets.core.training_plan import ranks_within_groups


def test_ties_share_the_better_rank_and_the_order_is_by_score_then_id():
    ranked = rank_members({"c": 0.9, "b": 0.2, "a": 0.9, "d": 0.5})
    assert [(r.member, r.rank) for r in ranked] == [("a", 1), ("c", 1), ("d", 3), ("b", 4)]
    assert [r.normalized for r in ranked] == [1.0, 1.0, (0.5 - 0.2) / 0.7, 0.0]


def test_a_flat_group_ranks_everyone_first_at_the_middle():
    assert [(r.rank, r.normalized) for r in rank_members({"x": 0.4, "y": 0.4})] == [(1, 0.5), (1, 0.5)]
    assert rank_members({}) == []


def test_scores_and_training_rank_alike():
    rewards = [("g1", "a", 0.9), ("g1", "b", 0.2), ("g1", "c", 0.9), ("g2", "d", 0.5), ("g2", "e", 0.7)]
    judged = {(g, r.member): r.rank for g, members in rank_groups(rewards) for r in members}
    trained = {(r["group_id"], r["agent_window_id"]): r["rank"] for r in ranks_within_groups(rewards)}
    assert judged == trained == {("g1", "a"): 1, ("g1", "c"): 1, ("g1", "b"): 3, ("g2", "e"): 1, ("g2", "d"): 2}


def test_a_group_is_judged_again_unless_every_member_holds_this_versions_score():
    stored = [
        StoredScore("g1", "a", 0.5, "outcome-v1"),
        StoredScore("g1", "b", 0.7, "outcome-v1"),
        StoredScore("g2", "c", 0.5, "outcome-v1"),
        StoredScore("g2", "d", None, None),
        StoredScore("g3", "e", 0.1, "outcome-v0"),
    ]
    assert groups_to_judge(stored, "outcome-v1") == {"g2": ["c", "d"], "g3": ["e"]}
    assert groups_to_judge(stored, "ruler-v2") == {"g1": ["a", "b"], "g2": ["c", "d"], "g3": ["e"]}
