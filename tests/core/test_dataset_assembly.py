from babylon_assets.core.dataset_assembly import plan_dataset


def member(group, aw, score, window="2025-01-15T10:00"):
    return {"group_id": group, "agent_window_id": aw, "score": score, "window_id": window}


def test_zero_variance_and_unscored_groups_are_dropped_with_reasons():
    plan = plan_dataset(
        [
            member("g1", "a", 0.2),
            member("g1", "b", 0.8),
            member("g2", "c", 0.5),
            member("g2", "d", 0.5),
            member("g3", "e", 0.4),
            member("g3", "f", None),
            member("g4", "g", 0.1, "2025-01-15T11:00"),
            member("g4", "h", 0.3, "2025-01-15T11:00"),
        ]
    )
    assert [m.agent_window_id for m in plan.members] == ["a", "b", "g", "h"]
    assert dict(plan.dropped_groups) == {"zero_variance": 1, "unscored": 1}
    assert (plan.windows, plan.groups) == (2, 2)


def test_the_dataset_id_depends_on_membership_and_rewards_only():
    rows = [member("g1", "a", 0.2), member("g1", "b", 0.8)]
    assert plan_dataset(rows).dataset_id == plan_dataset(list(reversed(rows))).dataset_id
    assert plan_dataset(rows).dataset_id != plan_dataset([member("g1", "a", 0.3), member("g1", "b", 0.8)]).dataset_id
