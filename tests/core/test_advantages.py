"""Group-relative advantages (babylon_assets.core.advantages) on constructed groups."""

from __future__ import annotations

import math

import pytest

from babylon_assets.core.advantages import group_advantages


def test_advantages_are_group_relative():
    advantages = group_advantages([1.0, 0.0, 0.0, 0.0])
    assert advantages is not None
    mean, std = 0.25, math.sqrt(0.1875)
    assert advantages == pytest.approx([(1 - mean) / (std + 1e-6)] + [(0 - mean) / (std + 1e-6)] * 3)
    assert sum(advantages) == pytest.approx(0.0, abs=1e-9)
    assert group_advantages([3.0, 1.0], scale=False) == [1.0, -1.0]


def test_groups_without_spread_or_members_carry_no_signal():
    assert group_advantages([0.5, 0.5, 0.5]) is None
    assert group_advantages([0.7]) is None
    assert group_advantages([]) is None
