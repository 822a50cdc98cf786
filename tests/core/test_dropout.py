"""Dropout and group cutting exactly as DESIGN 4."""

import pytest

from babylon_assets.core.dropout import assign_groups, dropout_draw, dropout_rate, group_sizes

IDS = [f"agent-{n:03d}@2025-01-15T10:00" for n in range(200)]


def test_the_rate_formula():
    assert dropout_rate(5000, 1000, 0.3) == pytest.approx(0.3)  # capped at MAX_DROPOUT
    assert dropout_rate(1200, 1000, 0.3) == pytest.approx(1 - 1000 / 1200)
    assert dropout_rate(800, 1000, 0.3) == 0.0
    assert dropout_rate(0, 1000, 0.3) == 0.0


def test_a_lower_rate_keeps_a_superset():
    def kept(rate):
        return {
            m.agent_window_id
            for m in assign_groups("2025-01-15T10:00", IDS, rate=rate, max_per_group=8, ready=True)
            if m.reason != "dropout"
        }

    previous = set(IDS)
    for rate in (0.0, 0.1, 0.2, 0.3, 0.5):
        current = kept(rate)
        assert current <= previous
        previous = current
    assert 0.2 < 1 - len(kept(0.3)) / len(IDS) < 0.4  # the draw is uniform enough
    assert dropout_draw("x") == dropout_draw("x") and dropout_draw("x") != dropout_draw("x", seed="other")


@pytest.mark.parametrize(("kept", "sizes"), [(0, []), (1, [1]), (8, [8]), (9, [5, 4]), (17, [6, 6, 5]), (16, [8, 8])])
def test_group_sizes_are_at_most_the_cap_and_as_equal_as_possible(kept, sizes):
    assert group_sizes(kept, 8) == sizes


def test_groups_are_cut_from_a_shuffle_seeded_by_the_window():
    members = assign_groups("2025-01-15T10:00", IDS[:20], rate=0.0, max_per_group=8, ready=True)
    groups = {}
    for m in members:
        assert m.kept and m.reason == "kept"
        groups.setdefault(m.group_id, []).append(m.agent_window_id)
    assert sorted(len(g) for g in groups.values()) == [6, 7, 7]
    assert assign_groups("2025-01-15T10:00", IDS[:20], rate=0.0, max_per_group=8, ready=True) == members
    other_hour = assign_groups("2025-01-15T11:00", IDS[:20], rate=0.0, max_per_group=8, ready=True)
    assert {m.agent_window_id: m.group_id[-3:] for m in other_hour} != {
        m.agent_window_id: m.group_id[-3:] for m in members
    }


def test_a_lone_member_and_a_window_that_is_not_ready_keep_no_group():
    (lone,) = assign_groups("2025-01-15T10:00", IDS[:1], rate=0.0, max_per_group=8, ready=True)
    assert (lone.kept, lone.reason, lone.group_id) == (False, "group_too_small", None)
    not_ready = assign_groups("2025-01-15T10:00", IDS[:4], rate=0.0, max_per_group=8, ready=False)
    assert {m.reason for m in not_ready} == {"window_not_ready"} and not any(m.kept for m in not_ready)
