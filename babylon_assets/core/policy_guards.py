"""Collapse and reward-hacking guards (issue 20): what a policy did, as numbers a person reads per training step and
per evaluation, and the warning when it collapses. No Dagster here.

A policy that learns to answer one action every time, or to stop trading, can still raise a reward that rewards
caution; these numbers show it before the gate does.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from babylon_assets.core.agent_protocol import Decision

ACTIONS = ("OPEN_LONG", "OPEN_SHORT", "CLOSE", "BUY_YES", "BUY_NO", "HOLD")
# An asset check warns when one action is more than this share of a policy's decisions.
MAX_ACTION_SHARE = 0.9


@dataclass
class PolicyBehaviour:
    """A policy's decisions and trades over some agent-windows."""

    actions: Counter[str] = field(default_factory=Counter)
    agent_windows: int = 0
    trades: int = 0
    leverages: list[float] = field(default_factory=list)
    amounts: list[float] = field(default_factory=list)

    def add_agent_window(self, decisions: Iterable[Decision], trades: int) -> None:
        """One agent-window's parsed decisions (unparseable ones as the HOLD they became) and its executed trades."""
        self.agent_windows += 1
        self.trades += trades
        for decision in decisions:
            self.actions[decision.action] += 1
            if decision.action in ("OPEN_LONG", "OPEN_SHORT"):
                self.leverages.append(decision.leverage)
            if decision.action in ("OPEN_LONG", "OPEN_SHORT", "BUY_YES", "BUY_NO"):
                self.amounts.append(decision.amount)

    @property
    def decisions(self) -> int:
        """Decisions counted."""
        return sum(self.actions.values())

    def share(self, action: str) -> float:
        """The share of decisions that were this action."""
        return self.actions.get(action, 0) / self.decisions if self.decisions else 0.0

    @property
    def top_action(self) -> tuple[str, float]:
        """The most frequent action and its share."""
        if not self.decisions:
            return "HOLD", 0.0
        action, count = max(self.actions.items(), key=lambda item: (item[1], item[0]))
        return action, count / self.decisions

    @property
    def trades_per_agent_window(self) -> float:
        """Executed trades per agent-window."""
        return self.trades / self.agent_windows if self.agent_windows else 0.0

    def warnings(self) -> list[str]:
        """Why this behaviour looks collapsed, in words (empty when it does not)."""
        found = []
        action, share = self.top_action
        if self.decisions and share > MAX_ACTION_SHARE:
            found.append(f"{action} is {share:.0%} of {self.decisions} decisions (more than {MAX_ACTION_SHARE:.0%})")
        if self.agent_windows and self.trades == 0:
            found.append(f"no trades in {self.agent_windows} agent-windows")
        return found

    def as_metrics(self) -> dict[str, float]:
        """Flat numbers for metadata and W&B."""
        metrics = {f"action_share_{action.lower()}": self.share(action) for action in ACTIONS}
        metrics.update(
            {
                "decisions": float(self.decisions),
                "trades_per_agent_window": self.trades_per_agent_window,
                "mean_leverage": statistics.fmean(self.leverages) if self.leverages else 0.0,
                "mean_amount": statistics.fmean(self.amounts) if self.amounts else 0.0,
                "top_action_share": self.top_action[1],
            }
        )
        return metrics


def reward_spread(groups: Sequence[Sequence[float]]) -> dict[str, float]:
    """The reward's spread within groups: the mean within-group standard deviation and the groups with none (which
    carry no learning signal and are skipped)."""
    spreads = [statistics.pstdev(rewards) for rewards in groups if len(rewards) >= 2]
    return {
        "reward_std_within_groups": statistics.fmean(spreads) if spreads else 0.0,
        "groups_zero_variance": float(sum(1 for s in spreads if s == 0.0) + sum(1 for g in groups if len(g) < 2)),
    }
