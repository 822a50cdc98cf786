"""Collapse guards: the action mix, trades, leverage and amounts a person reads, and the warnings."""

from __future__ import annotations

from babylon_assets.core.agent_protocol import Decision
from babylon_assets.core.policy_guards import PolicyBehaviour, reward_spread

HOLD = Decision(action="HOLD")
LONG = Decision(action="OPEN_LONG", ticker="BNNA", amount=100, leverage=3)


def test_the_action_mix_trades_leverage_and_amount() -> None:
    behaviour = PolicyBehaviour()
    behaviour.add_agent_window([LONG, HOLD, HOLD], trades=1)
    behaviour.add_agent_window([LONG, LONG, Decision(action="BUY_YES", marketId="m", amount=50)], trades=3)
    metrics = behaviour.as_metrics()
    assert metrics["action_share_open_long"] == 0.5 and metrics["action_share_hold"] == 2 / 6
    assert metrics["trades_per_agent_window"] == 2.0
    assert metrics["mean_leverage"] == 3.0 and metrics["mean_amount"] == 87.5
    assert behaviour.warnings() == []


def test_one_action_over_ninety_percent_or_no_trades_warns() -> None:
    collapsed = PolicyBehaviour()
    for _ in range(10):
        collapsed.add_agent_window([HOLD], trades=0)
    assert len(collapsed.warnings()) == 2
    assert "HOLD is 100%" in collapsed.warnings()[0] and "no trades" in collapsed.warnings()[1]
    at_ninety = PolicyBehaviour()
    at_ninety.add_agent_window([HOLD] * 9 + [LONG], trades=1)
    assert at_ninety.warnings() == []  # exactly 90% is not over it


def test_reward_spread_counts_groups_without_signal() -> None:
    spread = reward_spread([[0.1, 0.9], [0.5, 0.5], [0.3]])
    assert spread["groups_zero_variance"] == 2
    assert abs(spread["reward_std_within_groups"] - 0.2) < 1e-9
