"""Stitching rows into agent-windows, eligibility and window readiness (DESIGN 3). No Dagster here.

`check-windows` and the asset checks both use these functions, so there is one rule.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from babylon_assets.core.trajectory import ParsedTrajectory, QuarantinedRow, Step


@dataclass(frozen=True, slots=True)
class EligibilityRules:
    """Thresholds of DESIGN 3 (settings MIN_ACTIONS, MIN_AGENTS, MIN_READY_WINDOWS)."""

    min_actions: int = 5
    min_agents: int = 5
    min_ready_windows: int = 3


def agent_window_exclusion(llm_decisions: int, final_pnl: float | None, min_actions: int) -> str | None:
    """Why an agent-window cannot be trained on, or None when it is eligible."""
    if llm_decisions == 0:
        return "no_llm_calls"
    if llm_decisions < min_actions:
        return "too_few_llm_actions"
    if final_pnl is None:
        return "missing_pnl"
    return None


@dataclass(slots=True)
class AgentWindow:
    """One agent's play in one window: its trajectory rows stitched in time order (DESIGN 3)."""

    window_id: str
    agent_id: str
    trajectories: list[ParsedTrajectory]

    @property
    def agent_window_id(self) -> str:
        """Stable id of the agent-window; equals the trajectoryId when it is a single row."""
        if len(self.trajectories) == 1:
            return self.trajectories[0].trajectory_id
        return f"{self.agent_id}@{self.window_id}"

    @property
    def trajectory_ids(self) -> list[str]:
        """The game rows it was stitched from, in time order."""
        return [t.trajectory_id for t in self.trajectories]

    @property
    def steps(self) -> list[Step]:
        """All steps of the agent in the window, in time order."""
        return [step for t in self.trajectories for step in t.steps]

    @property
    def llm_decisions(self) -> int:
        """Decisions that carry an LLM call, over all stitched rows."""
        return sum(t.llm_decisions for t in self.trajectories)

    @property
    def final_pnl(self) -> float | None:
        """The P&L at the end of its last row that recorded one."""
        for trajectory in reversed(self.trajectories):
            if trajectory.final_pnl is not None:
                return trajectory.final_pnl
        return None

    @property
    def final_balance(self) -> float | None:
        """The balance at the end of its last row that recorded one."""
        for trajectory in reversed(self.trajectories):
            if trajectory.final_balance is not None:
                return trajectory.final_balance
        return None

    def exclusion(self, rules: EligibilityRules) -> str | None:
        """Why it is not eligible, or None."""
        return agent_window_exclusion(self.llm_decisions, self.final_pnl, rules.min_actions)


def stitch_agent_windows(trajectories: Iterable[ParsedTrajectory]) -> list[AgentWindow]:
    """Group parsed rows by (window, agent) and order each group by start time."""
    grouped: dict[tuple[str, str], list[ParsedTrajectory]] = defaultdict(list)
    for trajectory in trajectories:
        grouped[(trajectory.window_id, trajectory.agent_id)].append(trajectory)
    return [
        AgentWindow(window_id, agent_id, sorted(rows, key=lambda t: (t.start_time, t.trajectory_id)))
        for (window_id, agent_id), rows in sorted(grouped.items())
    ]


@dataclass(slots=True)
class WindowRead:
    """One window as read through the store: eligible agent-windows and everything left out."""

    window_id: str
    rows: int
    eligible: list[AgentWindow]
    excluded: list[tuple[AgentWindow | ParsedTrajectory, str]]
    quarantined: list[QuarantinedRow]

    @property
    def agents(self) -> int:
        """Distinct agents with at least one row that parsed."""
        ids = {aw.agent_id for aw in self.eligible}
        ids.update(item.agent_id for item, _ in self.excluded)
        return len(ids)

    def summary(self) -> WindowSummary:
        """The same counts `WindowTally` produces, from a full read."""
        return WindowSummary(
            window_id=self.window_id,
            rows=self.rows,
            agents=self.agents,
            agent_windows=len(self.eligible) + sum(1 for item, _ in self.excluded if isinstance(item, AgentWindow)),
            eligible_agents=len(self.eligible),
            excluded=Counter(reason for _, reason in self.excluded),
            quarantined=Counter(q.reason for q in self.quarantined),
            used_rows=sum(len(aw.trajectories) for aw in self.eligible),
            excluded_rows=len(self.excluded_row_reasons()),
        )

    def excluded_row_reasons(self) -> list[tuple[ParsedTrajectory, str]]:
        """Each excluded row with its reason: its own (evaluation, not training data), or its agent-window's."""
        rows: list[tuple[ParsedTrajectory, str]] = []
        for item, reason in self.excluded:
            if isinstance(item, AgentWindow):
                rows.extend((trajectory, reason) for trajectory in item.trajectories)
            else:
                rows.append((item, reason))
        return rows


def split_window(
    window_id: str, items: Iterable[ParsedTrajectory | QuarantinedRow], rules: EligibilityRules
) -> WindowRead:
    """Sort one window's parsed rows into eligible agent-windows, exclusions and quarantine."""
    rows = 0
    quarantined: list[QuarantinedRow] = []
    excluded: list[tuple[AgentWindow | ParsedTrajectory, str]] = []
    trainable: list[ParsedTrajectory] = []
    for item in items:
        rows += 1
        if isinstance(item, QuarantinedRow):
            quarantined.append(item)
        elif (reason := item.row_exclusion) is not None:
            excluded.append((item, reason))
        else:
            trainable.append(item)
    eligible: list[AgentWindow] = []
    for agent_window in stitch_agent_windows(trainable):
        reason = agent_window.exclusion(rules)
        if reason is None:
            eligible.append(agent_window)
        else:
            excluded.append((agent_window, reason))
    return WindowRead(window_id, rows, eligible, excluded, quarantined)


def accounting_line(rows: int, used: int, excluded: int, quarantined: int) -> str:
    """Where rows went, as one line a person reads (one window's, or a lookback's)."""
    return f"rows in {rows} = used {used} + excluded {excluded} + quarantined {quarantined}"


@dataclass(slots=True)
class WindowSummary:
    """Counts for one window, as `check-windows` prints them."""

    window_id: str
    rows: int = 0
    agents: int = 0
    agent_windows: int = 0
    eligible_agents: int = 0
    excluded: Counter[str] = field(default_factory=Counter)
    quarantined: Counter[str] = field(default_factory=Counter)
    outcomes_recorded: bool = False
    closed: bool = False
    # Every row is used (in an eligible agent-window), excluded (by its own flags or its agent-window's) or
    # quarantined: these three add up to `rows`.
    used_rows: int = 0
    excluded_rows: int = 0

    @property
    def quarantined_rows(self) -> int:
        """Rows that did not parse (one reason each)."""
        return sum(self.quarantined.values())

    @property
    def accounting(self) -> str:
        """Where every row went, as one line a person reads."""
        return accounting_line(self.rows, self.used_rows, self.excluded_rows, self.quarantined_rows)

    @property
    def accounted(self) -> bool:
        """True when used, excluded and quarantined rows add up to the rows read."""
        return self.rows == self.used_rows + self.excluded_rows + self.quarantined_rows

    def is_ready(self, rules: EligibilityRules) -> bool:
        """Enough distinct agents with eligible agent-windows (DESIGN 3)."""
        return self.eligible_agents >= rules.min_agents

    def shortfall(self, rules: EligibilityRules) -> str | None:
        """What the window lacks to be ready, in words, or None when ready."""
        if self.is_ready(rules):
            return None
        return f"window {self.window_id} has {self.eligible_agents} eligible agent(s); need >= {rules.min_agents}"


class _AgentTally:
    __slots__ = ("decisions", "final_pnl", "last_start", "rows")

    def __init__(self) -> None:
        self.rows = 0
        self.decisions = 0
        self.final_pnl: float | None = None
        self.last_start: datetime | None = None


class WindowTally:
    """Streaming counterpart of `split_window`: counts without holding steps in memory."""

    def __init__(self, window_id: str) -> None:
        self.summary = WindowSummary(window_id)
        self._agents: set[str] = set()
        self._trainable: dict[str, _AgentTally] = {}

    def add(self, item: ParsedTrajectory | QuarantinedRow) -> None:
        """Count one parsed or quarantined row."""
        self.summary.rows += 1
        if isinstance(item, QuarantinedRow):
            self.summary.quarantined[item.reason] += 1
            return
        self._agents.add(item.agent_id)
        reason = item.row_exclusion
        if reason is not None:
            self.summary.excluded[reason] += 1
            self.summary.excluded_rows += 1
            return
        tally = self._trainable.setdefault(item.agent_id, _AgentTally())
        tally.rows += 1
        tally.decisions += item.llm_decisions
        # The agent-window's P&L is that of its latest row that recorded one (as AgentWindow does).
        if item.final_pnl is not None and (tally.last_start is None or item.start_time >= tally.last_start):
            tally.final_pnl = item.final_pnl
            tally.last_start = item.start_time

    def finish(self, rules: EligibilityRules) -> WindowSummary:
        """The window's summary under `rules`."""
        summary = self.summary
        summary.agents = len(self._agents)
        summary.agent_windows = len(self._trainable)
        summary.eligible_agents = 0
        for tally in self._trainable.values():
            reason = agent_window_exclusion(tally.decisions, tally.final_pnl, rules.min_actions)
            if reason is None:
                summary.eligible_agents += 1
                summary.used_rows += tally.rows
            else:
                summary.excluded[reason] += 1
                summary.excluded_rows += tally.rows
        return summary


@dataclass(slots=True)
class ReadinessVerdict:
    """The verdict over a lookback: ready for training, or what is missing."""

    ready: bool
    ready_windows: list[str]
    message: str


def readiness_verdict(summaries: Iterable[WindowSummary], rules: EligibilityRules) -> ReadinessVerdict:
    """READY FOR TRAINING when at least `min_ready_windows` windows are ready; else what is missing."""
    summaries = list(summaries)
    ready = [s.window_id for s in summaries if s.is_ready(rules)]
    if len(ready) >= rules.min_ready_windows:
        return ReadinessVerdict(True, ready, f"READY FOR TRAINING: {len(ready)} ready window(s)")
    missing = rules.min_ready_windows - len(ready)
    closest = sorted((s for s in summaries if not s.is_ready(rules)), key=lambda s: -s.eligible_agents)[:missing]
    lines = [
        f"NOT READY: {len(ready)} of {rules.min_ready_windows} required ready windows "
        f"(a window needs >= {rules.min_agents} agents with >= {rules.min_actions} LLM decisions each)."
    ]
    if not summaries:
        lines.append("No trajectories in the lookback: record play or run `babylon simulate`.")
    lines.extend(f"  {s.shortfall(rules)}" for s in closest)
    return ReadinessVerdict(False, ready, "\n".join(lines))
